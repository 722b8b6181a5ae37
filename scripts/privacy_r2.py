"""Accuracy cost of the privacy options: test R² of small federated runs, plain vs private.

    .venv/bin/python scripts/privacy_r2.py statistics          # exact vs DP statistics, eps 0.1 / 1 / 10
    .venv/bin/python scripts/privacy_r2.py node-level --nodes 20 100   # DP-FedAvg vs DP-SGD vs plain
    .venv/bin/python scripts/privacy_r2.py node-level --nodes 20 --only sigma=1.0   # server-side vs distributed at one sigma

Node level: server-side DP-FedAvg, and the distributed variant under SecAgg+ (nodes clip and add
N(0, (sigma C)^2 / m)) with m = 3 (the reconstruction threshold: sum noise sigma C sqrt(N / 3)) and
m = N (no dropout: the same noise sigma C as server-side).

Every run is our real ServerApp logic (``run_federation``) over the real ClientApp handlers on
the in-process grid (tests/inprocess.py: no Ray, no network), hipparcos_absmag, IID partition.
Each setting is repeated (DP noise comes from OS randomness) and the table prints the mean and
spread of the final test R², the ε each run ended with and the ratio to the plain run's R².
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from astroscale_fl import (
    config,  # noqa: E402
    run_config,
)
from astroscale_fl.federation.server import run_federation  # noqa: E402
from strategies import build_strategy  # noqa: E402
from tests.inprocess import InProcessGrid  # noqa: E402

BASE = ["federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false",
        "federation.fraction_evaluate=0", "federation.client_threads=1"]


def run(overrides: list[str]) -> dict:
    """One federated run; its metrics."""
    cfg = run_config.validate(config.compose([*BASE, *overrides]))
    grid = InProcessGrid(int(cfg.federation.num_nodes))
    with tempfile.TemporaryDirectory() as out:
        return run_federation(grid, cfg, build_strategy(cfg), out, show_progress=False)


def epsilon_of(metrics: dict) -> str:
    privacy = metrics["privacy"]["card"]
    parts = []
    if "preprocessing_statistics" in privacy and privacy["preprocessing_statistics"].get("covered_by_dp"):
        parts.append(f"stats {privacy['preprocessing_statistics']['epsilon']:.3g}")
    if "node_level" in privacy:
        parts.append(f"node-level {privacy['node_level']['epsilon']:.3g}")
    if privacy.get("nodes") and privacy.get("name") == "dp_sgd":
        parts.append(f"example-level max {privacy['max_epsilon']:.3g}")
    return ", ".join(parts) or "-"


def table(settings: list[tuple[str, list[str]]], repeats: int, only: str = "") -> None:
    rows, plain = [], None
    for label, overrides in settings:
        if only not in label and not label.endswith("plain"):
            continue
        r2s, eps, started = [], "-", time.perf_counter()
        for _ in range(repeats):
            metrics = run(overrides)
            r2s.append(metrics["test_r2"])
            eps = epsilon_of(metrics)
        mean = statistics.fmean(r2s)
        plain = mean if plain is None else plain
        spread = statistics.pstdev(r2s) if len(r2s) > 1 else 0.0
        rows.append((label, mean, spread, eps, mean / plain if plain else float("nan"), time.perf_counter() - started))
        print(f"{label:<34} R2 {mean:7.4f} +- {spread:.4f}  ratio {rows[-1][4]:6.3f}  eps [{eps}]  ({rows[-1][5]:.0f} s)", flush=True)


def distributed(shares: int) -> list[str]:
    """Overrides for distributed DP-FedAvg under SecAgg+ (threshold 3) with ``m`` noise shares; the
    quantiser's range is the config's automatic one (just wide enough: C + 8 × a node's noise std)."""
    return ["federation.secure_aggregation=secaggplus", f"privacy.distributed_noise_nodes={shares}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["statistics", "node-level"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nodes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--only", default="", help="run only the settings whose label contains this text")
    parser.add_argument("--snr", type=float, default=10.0, help="task.min_parallax_snr (10: 30,574 stars)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    common = [f"federation.num_rounds={args.rounds}", f"task.min_parallax_snr={args.snr}", "partition=iid"]
    if args.what == "statistics":
        settings = [("exact statistics", [*common, "federation.num_nodes=5"])]
        settings += [(f"DP statistics eps={e:g}", [*common, "federation.num_nodes=5", f"privacy.statistics_epsilon={e}"])
                     for e in (10.0, 1.0, 0.1)]
        table(settings, args.repeats, args.only)
        return 0
    for nodes in args.nodes:
        node = [*common, f"federation.num_nodes={nodes}", "train.batch_size=32"]
        settings = [(f"{nodes} nodes plain", node)]
        for sigma in (0.5, 1.0, 2.0):
            dp = [*node, "privacy=dp_fedavg", f"privacy.node_noise_multiplier={sigma}"]
            settings.append((f"{nodes} nodes DP-FedAvg sigma={sigma}", dp))
            for shares in sorted({3, nodes}):  # m = the reconstruction threshold (default), m = every node
                settings.append((f"{nodes} nodes distributed m={shares} sigma={sigma}", [*dp, *distributed(shares)]))
        settings.append((f"{nodes} nodes DP-SGD eps=8", [*node, "privacy=dp_sgd"]))
        print(f"--- {nodes} nodes, {args.rounds} rounds", flush=True)
        table(settings, args.repeats, args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
