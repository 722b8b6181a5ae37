"""``astroscale-fl app DIR``: a minimal Flower app directory that runs the installed ServerApp and
ClientApp, so ``flwr run DIR`` works on any machine that has the package (no checkout needed).

``DIR/pyproject.toml`` holds ``[project]`` (name, version; no dependencies: everything comes from
the environment astroscale-fl is installed in, so a SuperLink that installs run dependencies has
nothing to install) and ``[tool.flwr.app]`` (components ``server.app:app`` / ``clients.app:app``,
the run-config keys ``overrides`` and ``output-dir``). Flower 1.41/1.42 keep the federation (how
many simulated SuperNodes) outside the app: a ``[tool.flwr.federations]`` table is moved into
``$FLWR_HOME/config.toml`` and commented out by ``flwr run``, so the app's default node count
travels as ``--federation-config "num-supernodes=N"`` in the command that the pyproject's header
and this command print. ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` in that command makes the
local SuperLink ``flwr run`` starts run the app in this environment (Flower's switch).
"""

from __future__ import annotations

from pathlib import Path

from astroscale_fl import __version__
from astroscale_fl.atomic import write_text
from astroscale_fl.errors import ConfigError, UserArgumentParser, report_user_errors

APP_NAME = "astroscale-fl-app"
MARKER = "# Written by `astroscale-fl app`"


def run_command(app_dir: str, num_nodes: int) -> str:
    """The ``flwr run`` command for a local simulation of ``num_nodes`` SuperNodes, in this environment."""
    return (f'FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run {app_dir} --stream '
            f'--federation-config "num-supernodes={num_nodes}"')


def pyproject_text(num_nodes: int) -> str:
    """The app's ``pyproject.toml``."""
    return f'''{MARKER} {__version__}: a Flower app that runs the installed package.
# Local simulation with the app's default node count ({num_nodes}), from this environment:
#   {run_command(".", num_nodes)}
# Run config: --run-config 'overrides="federation.num_rounds=5 partition=iid" output-dir="runs/one"'

[project]
name = "{APP_NAME}"
version = "{__version__}"
description = "AstroScale FL as a Flower app (ServerApp and ClientApp of the installed astroscale-fl)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "astroscale"

[tool.flwr.app.components]
serverapp = "server.app:app"
clientapp = "clients.app:app"

[tool.flwr.app.config]
# Hydra overrides applied on top of the packaged conf/config.yaml
overrides = ""
# Where the ServerApp writes history.csv, metrics.json and model/ ("" = outputs/flwr/<time> under the current folder)
output-dir = ""
'''


def write_app(app_dir: str | Path, num_nodes: int) -> Path:
    """Write ``app_dir/pyproject.toml`` (atomically); refuses to replace a pyproject.toml it did not write."""
    out = Path(app_dir)
    blocking = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"app DIR {app_dir}: {blocking} is a file, not a directory")
    target = out / "pyproject.toml"
    if target.exists() and not target.read_text(errors="replace").startswith(MARKER):
        raise ConfigError(f"app DIR {app_dir}: {target} exists and was not written by `astroscale-fl app`; "
                          "give an empty or new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(target, pyproject_text(num_nodes))
    except OSError as exc:
        raise ConfigError(f"app DIR {app_dir}: cannot write ({exc.strerror or exc}: {exc.filename})") from None
    return target


@report_user_errors
def main(argv: list[str]) -> int:
    """``astroscale-fl app DIR [--nodes N]``."""
    from astroscale_fl.data.split import DEFAULT_NUM_NODES

    parser = UserArgumentParser(
        prog="astroscale-fl app",
        description="Write DIR/pyproject.toml: a Flower app that runs the installed ServerApp and ClientApp, for "
                    "`flwr run DIR` (local simulation) or `flwr run DIR <connection>` (a deployment).")
    parser.add_argument("app_dir", metavar="DIR", help="directory to write pyproject.toml into (created if missing)")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NUM_NODES,
                        help=f"simulated SuperNodes in the printed command (default: the app's {DEFAULT_NUM_NODES})")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")
    path = write_app(args.app_dir, args.nodes)
    print(f"wrote {path}\nrun it (local simulation, {args.nodes} SuperNodes, this environment):\n  "
          f"{run_command(args.app_dir, args.nodes)}\nstop the local SuperLink `flwr run` leaves running: "
          "pkill -f 'flower-superlink --insecure --simulation'")
    return 0
