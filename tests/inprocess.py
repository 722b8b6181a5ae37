"""The library's in-process Grid for algorithm tests, recording what the nodes received."""

from __future__ import annotations

from flwr.app import Context, Message

from astroscale_fl.federation.engine import InProcessGrid as EngineGrid
from astroscale_fl.federation.engine import simulation_node_configs
from clients.app import app as client_app


class InProcessGrid(EngineGrid):
    """``astroscale_fl.federation.engine.InProcessGrid`` over our ClientApp; ``received`` lists
    every message delivered to a node, in delivery order."""

    def __init__(self, num_nodes: int, run_id: int = 1, node_configs: list[dict] | None = None):
        super().__init__(client_app, node_configs or simulation_node_configs(num_nodes), run_id=run_id)
        self.received: list[Message] = []

    def execute(self, work: list[tuple[Message, Context]]) -> list[Message]:
        self.received.extend(msg for msg, _ in work)
        return super().execute(work)
