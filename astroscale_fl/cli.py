"""``astroscale-fl``: the command-line entry point.

Subcommands
  train     federated training as a Hydra app (``astroscale-fl train --help`` for Hydra's help)
  predict   predictions from an exported model (same as ``python scripts/predict.py``)
  compare   summary table and curves of a multirun
  serve     HTTP predict service (POST /predict, /predict/batch, /healthz, /metrics)
  ingest    download a survey catalog into the common schema
  deploy    certificates, SuperLink, SuperNode, a whole local deployment
  app       a Flower app directory for ``flwr run``
"""

from __future__ import annotations

import importlib
import sys

USAGE = """usage: astroscale-fl <command> [args...]

Federated learning for astronomical survey catalogs, built on Flower.

commands:
  train [overrides...]   run a federated simulation (Hydra app; -m for multirun sweeps)
                         e.g. astroscale-fl train strategy=fedavg partition=iid federation.num_rounds=10
  predict                predict with an exported model (see astroscale-fl predict --help)
  compare DIR            summarise a multirun: summary.csv, summary.md, curves.png
  serve                  HTTP predict service (see astroscale-fl serve --help)
  deploy certs DIR       test CA, SuperLink certificate and node keys (see --help)
  deploy superlink       start a SuperLink with TLS and node authentication (see --help)
  deploy supernode       start a SuperNode: warm runtime and fast polls unless --cold (see --help)
  deploy local           SuperLink + N SuperNodes on 127.0.0.1, run the app, stop (--nodes N [overrides])
  app DIR                write a Flower app directory for `flwr run DIR` (see --help)
  node-data DIR          write N node data directories for a deployment (see --help)
  status                 runs and SuperNodes the SuperLink knows (see --help)
  node launcher|status   a SuperNode's warm ClientApp runtime / what the node did (see --help)
  node supernode         flower-supernode with short polls (see astroscale-fl node supernode --help)
  ingest                 download a survey catalog (see astroscale-fl ingest --help)
  preprocess             encode a table into tensor files (see astroscale-fl preprocess --help)

Run `astroscale-fl <command> --help` for a command's options.
"""


# command -> (module, function): imported only when the command runs (torch costs seconds)
COMMANDS = {
    "train": ("astroscale_fl.train", "main"),
    "predict": ("astroscale_fl.export.predict", "main"),
    "compare": ("astroscale_fl.learning.compare", "main"),
    "serve": ("astroscale_fl.serve", "main"),
    "deploy": ("astroscale_fl.deploy.cli", "deploy_main"),
    "app": ("astroscale_fl.deploy.flower_app", "main"),
    "node-data": ("astroscale_fl.deploy.cli", "node_data_main"),
    "status": ("astroscale_fl.deploy.cli", "status_main"),
    "node": ("astroscale_fl.deploy.node_cli", "main"),
    "ingest": ("astroscale_fl.ingest.cli", "main"),
    "preprocess": ("astroscale_fl.preprocessing.cli", "main"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command]
    return getattr(importlib.import_module(module), function)(rest)


if __name__ == "__main__":
    sys.exit(main())
