"""ClientApp: a thin Flower layer over :mod:`astroscale_fl.federation.client`.

Run by every SuperNode (and by the simulation's virtual nodes). Where a node's data lives
comes from its node config: ``data-dir=<dir>`` in deployment, ``partition-id`` in simulation.
"""

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from astroscale_fl.federation import client
from astroscale_fl.federation.protocol import BUDGET_EXCEEDED_CODE
from astroscale_fl.federation.secagg import node as secagg_node
from astroscale_fl.privacy.node import BudgetExceeded

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Statistics round: column statistics of this node's rows (or decline: privacy budget spent)."""
    try:
        return Message(content=client.handle_query(msg, dict(context.node_config), context.state), reply_to=msg)
    except BudgetExceeded as exc:
        return Message(Error(code=BUDGET_EXCEEDED_CODE, reason=exc.decline.to_reason()), reply_to=msg)


@app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    """SecAgg+ stages: keys, shares, unmasking shares (astroscale_fl.federation.secagg.node)."""
    return Message(content=secagg_node.handle_stage(msg, context), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model locally and return it (masked under SecAgg+; or decline: privacy budget spent)."""
    try:
        content = client.handle_train(msg, context)
        if secagg_node.RECORD in msg.content.config_records:
            content = secagg_node.mask_reply(msg, context, content)
        return Message(content=content, reply_to=msg)
    except BudgetExceeded as exc:
        return Message(Error(code=BUDGET_EXCEEDED_CODE, reason=exc.decline.to_reason()), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this node's local validation rows."""
    return Message(content=client.handle_evaluate(msg, dict(context.node_config)), reply_to=msg)
