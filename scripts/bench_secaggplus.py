"""Cost of SecAgg+: bytes and seconds per round, and final R², with and without it.

    .venv/bin/python scripts/bench_secaggplus.py                  # 5 and 20 nodes, 3 rounds
    .venv/bin/python scripts/bench_secaggplus.py --nodes 5 20 50 --rounds 5

Our ServerApp logic and ClientApp handlers on the in-process grid (tests/inprocess.py), so the
seconds are the work of the server *and every node* done one after the other in this process
(keys, Shamir shares, encryption, AES masks, unmasking): an upper bound on what one node adds in
a real federation, where nodes work in parallel. Bytes: model arrays both ways (what the round
loop counts) plus SecAgg+'s keys, shares and ciphertexts (stage messages and relays). Rounds after
the first are timed (the first pays for caches and imports).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from astroscale_fl import (
    config,  # noqa: E402
    run_config,
)
from astroscale_fl.federation.server import run_federation  # noqa: E402
from strategies import build_strategy  # noqa: E402
from tests.inprocess import InProcessGrid  # noqa: E402

BASE = ["federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false", "federation.fraction_evaluate=0",
        "partition=iid"]


def run(nodes: int, rounds: int, secure: bool, extra: list[str]) -> dict:
    overrides = [*BASE, f"federation.num_nodes={nodes}", f"federation.num_rounds={rounds}", *extra]
    if secure:
        overrides.append("federation.secure_aggregation=secaggplus")
    cfg = run_config.validate(config.compose(overrides))
    strategy = build_strategy(cfg)
    with tempfile.TemporaryDirectory() as out:
        metrics = run_federation(InProcessGrid(nodes), cfg, strategy, out, show_progress=False)
        import pandas as pd

        history = pd.read_csv(Path(out) / "history.csv")
    protocol = list(getattr(strategy, "protocol_bytes", [0] * rounds))
    per_round_bytes = [(u + d + p) for u, d, p in zip(history["bytes_up"], history["bytes_down"], protocol, strict=True)]
    return {"seconds": statistics.median(history["wall_seconds"].iloc[1:]), "bytes": statistics.median(per_round_bytes[1:]),
            "r2": metrics["test_r2"], "bound": getattr(strategy, "error_bound", float("nan"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="more config overrides (e.g. strategy=scaffold)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    print(f"{'nodes':>5} {'plain s/round':>13} {'secagg s/round':>14} {'x':>6} {'plain B/round':>13} {'secagg B/round':>14} {'x':>6} "
          f"{'plain R2':>8} {'secagg R2':>9} {'mean err bound':>14}")
    for nodes in args.nodes:
        plain = run(nodes, args.rounds, False, args.overrides)
        secure = run(nodes, args.rounds, True, args.overrides)
        print(f"{nodes:>5} {plain['seconds']:>13.3f} {secure['seconds']:>14.3f} {secure['seconds'] / plain['seconds']:>6.2f} "
              f"{plain['bytes']:>13,.0f} {secure['bytes']:>14,.0f} {secure['bytes'] / plain['bytes']:>6.2f} "
              f"{plain['r2']:>8.4f} {secure['r2']:>9.4f} {secure['bound']:>14.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
