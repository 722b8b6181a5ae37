"""ServerApp: a thin Flower layer over :func:`astroscale_fl.federation.server.run_federation`.

``flwr run .`` composes the config from ``conf/`` with the run-config's ``overrides``
(Hydra override syntax); ``astroscale-fl train`` builds the app with an already composed
config through :func:`make_server_app`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from astroscale_fl import config, run_config
from astroscale_fl.data.nodes import resolve_num_nodes
from astroscale_fl.deploy.fast_poll import quick_object_pulls
from astroscale_fl.federation.server import run_federation
from strategies import build_strategy


def make_server_app(cfg: DictConfig, out_dir: str | Path, show_progress: bool = True) -> ServerApp:
    """A ServerApp bound to a validated config, writing its outputs to ``out_dir``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, build_strategy(cfg), out_dir, show_progress=show_progress)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: config from run-config ``overrides``."""
    quick_object_pulls()  # a node's reply is pulled within 0.05 s of its upload, not after Flower's 1 s retry
    cfg = resolve_num_nodes(run_config.validate(config.compose(str(context.run_config.get("overrides", "")))))
    out_dir = str(context.run_config.get("output-dir", "")) or f"outputs/flwr/{dt.datetime.now():%Y-%m-%d/%H-%M-%S}"
    run_federation(grid, cfg, build_strategy(cfg), out_dir)
