"""An in-process Grid for algorithm tests: our real ClientApp handlers, no Ray, no network.

Each node has its own Flower ``Context`` (node config and persistent state), as a SuperNode
would; messages go straight to the handler functions of ``clients/app.py``.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import clients.app as client_app


class InProcessGrid:
    """Minimal Grid: ``get_node_ids`` and ``send_and_receive`` over local node contexts."""

    def __init__(self, num_nodes: int, run_id: int = 1, node_configs: list[dict] | None = None):
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 0
        configs = node_configs or [{"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)]
        self.contexts = {
            100 + i: Context(run_id=run_id, node_id=100 + i, node_config=cfg, state=RecordDict(), run_config={})
            for i, cfg in enumerate(configs)
        }
        self.received: list[Message] = []

    def get_node_ids(self):
        return list(self.contexts)

    def _handle(self, msg: Message) -> Message:
        self.received.append(msg)
        context = self.contexts[msg.metadata.dst_node_id]
        handler = {MessageType.TRAIN: client_app.train, MessageType.EVALUATE: client_app.evaluate,
                   MessageType.QUERY: client_app.query}.get(msg.metadata.message_type, client_app.app)  # query.secagg etc.
        return handler(msg, context)

    def send_and_receive(self, messages, timeout=None):
        return [self._handle(m) for m in messages]

    def push_messages(self, messages):
        ids = []
        self._replies = getattr(self, "_replies", {})
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = mid = f"m{len(self.received)}-{i}"
            reply = self._handle(msg)
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]
