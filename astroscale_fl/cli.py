"""``astroscale-fl``: the command-line entry point.

Subcommands
  train     federated training as a Hydra app (``astroscale-fl train --help`` for Hydra's help)
  predict   predictions from an exported model (same as ``python scripts/predict.py``)
  compare   summary table and curves of a multirun
  serve     HTTP predict service (POST /predict, /predict/batch, /healthz, /metrics)
  ingest    download a survey catalog into the common schema
"""

from __future__ import annotations

import sys

USAGE = """usage: astroscale-fl <command> [args...]

Federated learning for astronomical survey catalogs, built on Flower.

commands:
  train [overrides...]   run a federated simulation (Hydra app; -m for multirun sweeps)
                         e.g. astroscale-fl train strategy=fedavg partition=iid federation.num_rounds=10
  predict                predict with an exported model (see astroscale-fl predict --help)
  compare DIR            summarise a multirun: summary.csv, summary.md, curves.png
  serve                  HTTP predict service (see astroscale-fl serve --help)
  node-data DIR          write N node data directories for a deployment (see --help)
  status                 runs and SuperNodes the SuperLink knows (see --help)
  node launcher|status   a SuperNode's warm ClientApp runtime / what the node did (see --help)
  ingest                 download a survey catalog (see astroscale-fl ingest --help)
  preprocess             encode a table into tensor files (see astroscale-fl preprocess --help)

Run `astroscale-fl <command> --help` for a command's options.
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from astroscale_fl.train import main as train_main

        return train_main(rest)
    if command == "predict":
        from astroscale_fl.export.predict import main as predict_main

        return predict_main(rest)
    if command == "compare":
        from astroscale_fl.learning.compare import main as compare_main

        return compare_main(rest)
    if command == "serve":
        from astroscale_fl.serve import main as serve_main

        return serve_main(rest)
    if command == "node-data":
        from astroscale_fl.deploy.cli import node_data_main

        return node_data_main(rest)
    if command == "status":
        from astroscale_fl.deploy.cli import status_main

        return status_main(rest)
    if command == "node":
        from astroscale_fl.deploy.node_cli import main as node_main

        return node_main(rest)
    if command == "ingest":
        from astroscale_fl.ingest.cli import main as ingest_main

        return ingest_main(rest)
    if command == "preprocess":
        from astroscale_fl.preprocessing.cli import main as preprocess_main

        return preprocess_main(rest)
    print(f"error: unknown command {command!r}; expected train, predict, compare, serve, node-data, status, node, ingest or preprocess", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
