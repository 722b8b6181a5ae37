"""FedAdam ``server_lr`` sweep on the survey task, ours against Flower's FedAdam on the same ClientApp.

    .venv/bin/python scripts/bench_fedadam.py                       # 20 rounds, 4 nodes by survey
    .venv/bin/python scripts/bench_fedadam.py --lrs 0.01 0.1 --rounds 5

Every run drives our real ClientApp handlers in process (no Ray): 4 nodes, one per survey of
``task=survey_redshift``, the default MLP, 1 local epoch per round, the same seed and the same
preprocessing (fitted from the nodes' statistics). It compares

- ours, ``bias_correction=true`` (the default: Kingma & Ba's step size, as Flower's FedAdam),
- ours, ``bias_correction=false`` (Reddi et al.'s Algorithm 2 as written),
- Flower's ``flwr.serverapp.strategy.FedAdam`` with the same eta, betas and tau,

and prints the test R² after the last round of each, and the ratio ours / Flower's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from astroscale_fl import (
    config,  # noqa: E402
    run_config,
)
from astroscale_fl.data.nodes import task_split  # noqa: E402
from astroscale_fl.data.tasks import get_task  # noqa: E402
from astroscale_fl.federation.messages import round_config  # noqa: E402
from astroscale_fl.federation.records import load_arrays, model_to_arrays  # noqa: E402
from astroscale_fl.federation.rounds import federated_statistics, run_rounds  # noqa: E402
from astroscale_fl.learning.models import build_model  # noqa: E402
from astroscale_fl.learning.training import encode_rows, evaluate  # noqa: E402
from astroscale_fl.preprocessing import Pipeline  # noqa: E402
from strategies import build_strategy  # noqa: E402
from tests.inprocess import InProcessGrid  # noqa: E402  (the in-process Grid of the test suite)


def setup(rounds: int):
    cfg = run_config.validate(config.compose(["task=survey_redshift", "strategy=fedadam", f"federation.num_rounds={rounds}",
                                          "federation.fraction_evaluate=0"]))
    grid = InProcessGrid(int(cfg.federation.num_nodes))
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=600)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(stats)
    _, test = task_split(cfg)
    return cfg, grid, pipeline, encode_rows(pipeline, test, "cpu")


def test_r2(cfg, pipeline, test_xy, arrays) -> float:
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed))
    load_arrays(model, arrays)
    return evaluate(model, *test_xy, pipeline.target.inverse).r2


def run_ours(cfg, grid, pipeline, test_xy, lr: float, bias_correction: bool, rounds: int) -> float:
    strategy = build_strategy(run_config.validate(config.compose([
        "task=survey_redshift", "strategy=fedadam", f"strategy.server_lr={lr}",
        f"strategy.bias_correction={str(bias_correction).lower()}", "federation.fraction_evaluate=0"])))
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed))
    arrays, _ = run_rounds(strategy, grid, model_to_arrays(model), rounds, round_config(cfg, pipeline), None,
                           timeout=600, show_progress=False)
    return test_r2(cfg, pipeline, test_xy, arrays)


def run_flower(cfg, grid, pipeline, test_xy, lr: float, rounds: int) -> float:
    from flwr.serverapp.strategy import FedAdam as FlowerFedAdam

    s = cfg.strategy
    strategy = FlowerFedAdam(fraction_train=1.0, fraction_evaluate=0.0, eta=lr, beta_1=s.beta1, beta_2=s.beta2, tau=s.tau)
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed))
    result = strategy.start(grid=grid, initial_arrays=model_to_arrays(model), num_rounds=rounds, timeout=600,
                            train_config=round_config(cfg, pipeline))
    return test_r2(cfg, pipeline, test_xy, result.arrays)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's FedAdam")
    args = parser.parse_args()
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg, grid, pipeline, test_xy = setup(args.rounds)
    print(f"survey_redshift, {cfg.federation.num_nodes} nodes by survey, {args.rounds} rounds, seed {cfg.seed}; test R² after the last round")
    print("| server_lr | ours (bias correction) | ours (no correction) | Flower FedAdam | ours / Flower | wall s |")
    print("|---|---|---|---|---|---|")
    for lr in args.lrs:
        started = time.perf_counter()
        corrected = run_ours(cfg, grid, pipeline, test_xy, lr, True, args.rounds)
        plain = run_ours(cfg, grid, pipeline, test_xy, lr, False, args.rounds)
        flower = float("nan") if args.no_flower else run_flower(cfg, grid, pipeline, test_xy, lr, args.rounds)
        print(f"| {lr:g} | {corrected:.4f} | {plain:.4f} | {flower:.4f} | {corrected / flower:.3f} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
