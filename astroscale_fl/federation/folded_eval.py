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

from collections.abc import Callable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from astroscale_fl.federation.protocol import CONFIG_KEY, EVAL_METRICS_KEY, EVAL_ROUND_KEY, METRICS_KEY
from astroscale_fl.federation.records import record_nbytes

SendAndReceive = Callable[[list[Message]], tuple[list[Message], list[int]]]


class FoldedEvaluation:
    """Round ``eval_round``'s evaluation messages, riding on the next round's training messages."""

    def __init__(self, eval_msgs: list[Message], eval_round: int) -> None:
        self.eval_msgs, self.eval_round = eval_msgs, eval_round
        self.flagged: set[int] = set()
        self.own: list[Message] = []  # evaluate messages sent on their own (node not trained this round)
        self.results: list[tuple[int, Message]] = []  # (node, evaluate-reply-shaped message: what aggregate_evaluate reads)
        self.errored: set[int] = set()  # flagged nodes whose training reply was an error
        self.missing_own: list[int] = []  # evaluation-only nodes that did not reply
        self.bytes_down = 0  # payload of the evaluate messages sent on their own
        self.result_nodes: list[int] = []  # the node of each result :meth:`finish` returned

    def attach(self, train_msgs: list[Message]) -> list[Message]:
        """Flag the training messages of nodes in the evaluation sample; return training messages
        plus the evaluate messages that must go on their own."""
        wanted = {m.metadata.dst_node_id for m in self.eval_msgs}
        out = []
        for msg in train_msgs:
            node = msg.metadata.dst_node_id
            if node in wanted:
                content = RecordDict(dict(msg.content.items()))  # a round's messages share content: copy first
                content[CONFIG_KEY] = ConfigRecord({**msg.content[CONFIG_KEY], EVAL_ROUND_KEY: self.eval_round})
                msg = Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
                self.flagged.add(node)
            out.append(msg)
        self.own = [m for m in self.eval_msgs if m.metadata.dst_node_id not in self.flagged]
        self.bytes_down += sum(record_nbytes(m.content) for m in self.own)
        return out + self.own

    def split(self, replies: list[Message], missing: list[int]) -> tuple[list[Message], list[int]]:
        """Take the evaluation results out of a round's replies; return the training replies and the
        training nodes that did not reply (evaluation-only nodes that did not are logged by the caller)."""
        own_nodes = {m.metadata.dst_node_id for m in self.own}
        train_replies = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.metadata.message_type == MessageType.EVALUATE:
                self.results.append((node, reply))
                continue
            train_replies.append(reply)
            if reply.has_error():
                self.errored.add(node)
            elif EVAL_METRICS_KEY in reply.content.metric_records:
                metrics = reply.content[EVAL_METRICS_KEY]
                del reply.content[EVAL_METRICS_KEY]  # the strategy aggregates the training part only
                self.results.append((node, Message(RecordDict({METRICS_KEY: metrics}), dst_node_id=node,
                                                   message_type=MessageType.EVALUATE)))
        self.missing_own = [n for n in missing if n in own_nodes]
        return train_replies, [n for n in missing if n not in own_nodes]

    def finish(self, send_and_receive: SendAndReceive) -> tuple[list[Message], list[int]]:
        """Evaluate on their own the flagged nodes whose training reply was an error (e.g. a declined
        round); return all evaluation results and the nodes that did not evaluate."""
        retry = [m for m in self.eval_msgs if m.metadata.dst_node_id in self.flagged & self.errored]
        missing = list(self.missing_own)
        if retry:
            self.bytes_down += sum(record_nbytes(m.content) for m in retry)
            again, again_missing = send_and_receive(retry)
            self.results += [(r.metadata.src_node_id, r) for r in again]
            missing += again_missing
        # in node order, as send_and_receive returns replies: the pooled sums then add up identically
        ordered = sorted(self.results, key=lambda pair: pair[0])
        self.result_nodes = [node for node, _ in ordered]  # the results' senders (a folded result has no sender of its own)
        return [msg for _, msg in ordered], missing
