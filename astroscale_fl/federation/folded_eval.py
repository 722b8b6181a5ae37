"""One message per round: federated evaluation folded into the next round's training message.

With ``federation.evaluate_in_train=true`` the evaluation of round r's global model is not sent as
its own message. Round r+1's training message already carries exactly that model, so a node that
would have evaluated it finds ``EVAL_ROUND_KEY = r`` in the message's config, evaluates the received
arrays on its local validation share *before* training, and returns the sums in the
``EVAL_METRICS_KEY`` MetricRecord next to its trained model. The last round's model is evaluated
by a final evaluate-only message. A node of the evaluation sample that is not sampled for training
(partial participation), or whose training reply is an error (a declined round), gets the plain
evaluate message, so the evaluated node set, and the pooled metrics, equal the two-message run's.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

EVAL_ROUND_KEY = "evaluate-round"  # config: evaluate the received arrays (round r's model) before training
EVAL_METRICS_KEY = "evaluate-metrics"  # reply: the evaluation sums of the received arrays


def fold(train_msgs: list[Message], eval_msgs: list[Message], eval_round: int) -> tuple[list[Message], list[Message], set[int]]:
    """Flag the training messages of nodes in ``eval_msgs``' sample; return (training messages,
    evaluate messages still to send on their own, ids of the flagged nodes)."""
    wanted = {m.metadata.dst_node_id for m in eval_msgs}
    folded, flagged = [], set()
    for msg in train_msgs:
        node = msg.metadata.dst_node_id
        if node in wanted:
            content = RecordDict(dict(msg.content.items()))  # messages of one round share content: copy before flagging
            content["config"] = ConfigRecord({**msg.content["config"], EVAL_ROUND_KEY: eval_round})
            msg = Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
            flagged.add(node)
        folded.append(msg)
    return folded, [m for m in eval_msgs if m.metadata.dst_node_id not in flagged], flagged


def is_evaluation(reply: Message) -> bool:
    """A reply to a plain evaluate message."""
    return reply.metadata.message_type == MessageType.EVALUATE


def folded_results(train_replies: list[Message]) -> tuple[list[Message], set[int]]:
    """The evaluation results inside training replies, as evaluate-reply-shaped messages (what
    ``Strategy.aggregate_evaluate`` reads), and the nodes they came from."""
    results, nodes = [], set()
    for reply in train_replies:
        if reply.has_error() or EVAL_METRICS_KEY not in reply.content.metric_records:
            continue
        node = reply.metadata.src_node_id
        results.append(Message(RecordDict({"metrics": reply.content[EVAL_METRICS_KEY]}), dst_node_id=node,
                               message_type=MessageType.EVALUATE))
        nodes.add(node)
    return results, nodes


def strip(reply: Message) -> None:
    """Drop the evaluation record from a training reply before the strategy aggregates it."""
    if not reply.has_error() and EVAL_METRICS_KEY in reply.content.metric_records:
        del reply.content[EVAL_METRICS_KEY]
