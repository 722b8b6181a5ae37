"""ClientApp: a thin Flower layer over :mod:`astroscale_fl.federation.client`.

Run by every SuperNode (and by the simulation's virtual nodes). Where a node's data lives
comes from its node config: ``data-dir=<dir>`` in deployment, ``partition-id`` in simulation.
In deployment each message is also recorded in ``<data-dir>/.astroscale/node-status.json``
(:mod:`astroscale_fl.deploy.node_status`), what ``astroscale-fl node status`` and the node's
metrics show.
"""

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from astroscale_fl.deploy.node_status import recording
from astroscale_fl.federation import client
from astroscale_fl.federation.packing import packed_arrays_mod
from astroscale_fl.federation.protocol import (
    BUDGET_EXCEEDED_CODE,
    CONFIG_KEY,
    FLOOR_REFUSED_CODE,
    METRICS_KEY,
    SERVER_ROUND_KEY,
    WEIGHT_KEY,
)
from astroscale_fl.federation.secagg import node as secagg_node
from astroscale_fl.privacy.floor import FloorRefused
from astroscale_fl.privacy.node import BudgetExceeded

app = ClientApp(mods=[packed_arrays_mod])  # arrays arrive packed through a real transport


def _round(msg: Message) -> int:
    config = msg.content.config_records.get(CONFIG_KEY)
    return int(config.get(SERVER_ROUND_KEY, 0)) if config is not None else 0


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Statistics round: column statistics of this node's rows (or decline: privacy budget spent)."""
    with recording(dict(context.node_config), "query", 0) as outcome:
        try:
            content = client.handle_query(msg, dict(context.node_config), context.state)
        except BudgetExceeded as exc:
            outcome["declined"] = str(exc.decline)
            return Message(Error(code=BUDGET_EXCEEDED_CODE, reason=exc.decline.to_reason()), reply_to=msg)
        outcome["rows"] = int(content[METRICS_KEY][WEIGHT_KEY])
    return Message(content=content, reply_to=msg)


@app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    """SecAgg+ stages: keys, shares, unmasking shares (astroscale_fl.federation.secagg.node)."""
    return Message(content=secagg_node.handle_stage(msg, context), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model locally and return it (masked under SecAgg+), or decline: the privacy
    budget is spent, or the round is weaker than the node's own privacy floor (node config,
    astroscale_fl.privacy.floor)."""
    with recording(dict(context.node_config), "train", _round(msg)) as outcome:
        try:
            content = client.handle_train(msg, context)
        except (BudgetExceeded, FloorRefused) as exc:
            outcome["declined"] = str(exc.decline)
            code = FLOOR_REFUSED_CODE if isinstance(exc, FloorRefused) else BUDGET_EXCEEDED_CODE
            return Message(Error(code=code, reason=exc.decline.to_reason()), reply_to=msg)
        metrics = content[METRICS_KEY]
        outcome["rows"] = int(metrics[WEIGHT_KEY])
        if "epsilon" in metrics:
            outcome["epsilon"] = float(metrics["epsilon"])
            outcome["epsilon_budget"] = client.node_epsilon_budget(msg, context)
        if secagg_node.RECORD in msg.content.config_records:
            content = secagg_node.mask_reply(msg, context, content)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this node's local validation rows."""
    with recording(dict(context.node_config), "evaluate", _round(msg)):
        content = client.handle_evaluate(msg, dict(context.node_config))
    return Message(content=content, reply_to=msg)
