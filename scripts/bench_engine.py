"""Benchmark the simulation engine against a bare torch FedAvg loop doing the same work.

    .venv/bin/python scripts/bench_engine.py            # everything (several minutes on 2 cores)
    .venv/bin/python scripts/bench_engine.py --quick    # fewer rounds and node counts, no Ray

Prints, in one run:
* the default job (``astroscale-fl train``, a fresh process each, as a user runs it) with
  ``federation.backend=inprocess`` and ``ray``, against a bare torch FedAvg loop (also a fresh
  process) doing the same work: same rows per node, local split, batches, Adam, rounds, central
  test evaluation and local evaluation on every node; goal <= 1.3x;
* the per-node per-round overhead of the in-process engine beyond the bare loop's work, for
  5 / 50 / 500 / 1000 iid nodes (goal <= 2 ms), measured inside this process;
* ``astroscale-fl train -m seed=0,1,2,3`` against one job (goal <= 4.2x);
* 1,000 nodes, ``fraction_train=0.05``, 5 rounds on Hipparcos (iid) (goal <= 30 s on 2 cores);
* the top entries of a profile of the 50-node federation (one worker, so the nodes' work shows).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from astroscale_fl import config, run_config
from astroscale_fl.data.holdout import LOCAL_VAL_FRACTION

QUIET = ["federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false"]


def bare_fedavg(overrides: list[str]) -> tuple[float, float, float]:
    """A bare torch FedAvg loop doing the job's work; returns (total seconds, rounds seconds,
    rounds CPU seconds)."""
    from astroscale_fl.data.nodes import partition_frame, task_split
    from astroscale_fl.data.tasks import get_task
    from astroscale_fl.learning.models import build_model
    from astroscale_fl.preprocessing import Pipeline
    from astroscale_fl.train import preflight

    started = time.perf_counter()
    cfg = preflight(run_config.validate(config.compose(overrides)))
    torch.set_num_threads(int(cfg.federation.client_threads))
    fed, tr = cfg.federation, cfg.train
    train, test = task_split(cfg)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit(train)
    nodes = []
    for k in range(int(fed.num_nodes)):
        frame = partition_frame(cfg, k, int(fed.num_nodes))
        is_val = np.random.default_rng([int(cfg.seed), 0x5A1]).random(len(frame)) < LOCAL_VAL_FRACTION
        parts = [frame.loc[~is_val], frame.loc[is_val]]
        nodes.append([torch.from_numpy(f(p)) for p in parts for f in (pipeline.transform_features, pipeline.transform_target)])
    test_x, test_y = torch.from_numpy(pipeline.transform_features(test)), torch.from_numpy(pipeline.transform_target(test))
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed))
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    rounds_started, rounds_cpu = time.perf_counter(), time.process_time()
    for server_round in range(1, int(fed.num_rounds) + 1):
        rng = np.random.default_rng([int(cfg.seed), server_round, 0])
        count = max(int(fed.min_train_nodes), round(fed.fraction_train * len(nodes)))
        chosen = sorted(rng.choice(len(nodes), size=min(count, len(nodes)), replace=False))
        states, weights = [], []
        for k in chosen:
            x, y = nodes[k][0], nodes[k][1]
            model.load_state_dict(global_state)
            opt = torch.optim.Adam(model.parameters(), lr=tr.lr)
            gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + server_round * 7919 + int(k))
            for _ in range(int(tr.local_epochs)):
                for index in torch.split(torch.randperm(len(y), generator=gen), int(tr.batch_size)):
                    opt.zero_grad(set_to_none=True)
                    torch.nn.functional.mse_loss(model(x[index]), y[index]).backward()
                    opt.step()
            states.append({n: v.detach().clone() for n, v in model.state_dict().items()})
            weights.append(len(y))
        total = float(sum(weights))
        global_state = {n: sum(s[n].double() * (w / total) for s, w in zip(states, weights)).float() for n in global_state}
        model.load_state_dict(global_state)
        with torch.no_grad():
            for k in range(len(nodes)) if fed.fraction_evaluate > 0 else []:
                vx, vy = (nodes[k][2], nodes[k][3]) if len(nodes[k][3]) else (nodes[k][0], nodes[k][1])
                torch.nn.functional.mse_loss(model(vx), vy)
            test_rmse = float(torch.sqrt(torch.mean((model(test_x) - test_y) ** 2)))
    done = time.perf_counter()
    print(f"bare loop: test RMSE (scaled) {test_rmse:.4f}", file=sys.stderr)
    return done - started, done - rounds_started, time.process_time() - rounds_cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(args: list[str], out: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``astroscale-fl train ARGS`` in a fresh process."""
    wall, cpu, _ = run_cli_rss(args, out)
    return wall, cpu


# Runs a command and prints its peak RSS (kB): measured from a small launcher, because a child forked
# from this (large) benchmark process inherits its memory high-water mark.
_PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
             "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run_cli_rss(args: list[str], out: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of ``astroscale-fl train ARGS`` in a fresh process."""
    cmd = [sys.executable, "-m", "astroscale_fl.cli", "train", *args, *QUIET, f"hydra.run.dir={out}",
           f"hydra.sweep.dir={out}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *cmd], check=True, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started, _children_cpu() - cpu, int(done.stdout.split()[-1]) / 1024


def run_bare_process(overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the bare loop in a fresh process."""
    started, cpu = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, __file__, "--bare-loop", *overrides], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started, _children_cpu() - cpu


def engine_rounds(overrides: list[str], workers: int | None = None, profile: cProfile.Profile | None = None) -> tuple[float, int]:
    """(seconds spent in rounds, messages served) of an in-process federation in this process."""
    from astroscale_fl.federation import engine
    from astroscale_fl.train import preflight
    from clients.app import app as client_app
    from server.app import make_server_app

    cfg = preflight(run_config.validate(config.compose([*overrides, *QUIET])))
    out = tempfile.mkdtemp(prefix="bench-engine-")
    default_workers = engine.default_workers
    if workers is not None:
        engine.default_workers = lambda *_: workers
    try:
        if profile is not None:
            profile.enable()
        grid = engine.run_inprocess(make_server_app(cfg, out, show_progress=False), client_app, cfg)
    finally:
        if profile is not None:
            profile.disable()
        engine.default_workers = default_workers
    import pandas as pd

    return float(pd.read_csv(Path(out) / "history.csv")["wall_seconds"].sum()), grid.messages_served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and node counts, no Ray")
    parser.add_argument("--bare-loop", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_loop is not None:
        print(*bare_fedavg(args.bare_loop))
        return
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # its one-off torch._dynamo import, out of the timings
    tmp = tempfile.mkdtemp(prefix="bench-engine-")
    print(f"cores: {len(os.sched_getaffinity(0))} (shared machine: timings are noisy)")

    job: dict[str, tuple[float, float]] = {}
    for section in (default_job, per_node_overhead, multirun, many_nodes, profile_top):
        try:
            section(args, tmp, job)
        except Exception as exc:  # noqa: BLE001 -- one failing section should not hide the others
            print(f"{section.__name__}: failed: {type(exc).__name__}: {exc}")


def _ratio(what: str, run: tuple[float, float], base: tuple[float, float], goal: str) -> str:
    return (f"{what}: wall {run[0]:.1f} s vs {base[0]:.1f} s = {run[0] / base[0]:.2f}x, CPU {run[1]:.1f} s vs "
            f"{base[1]:.1f} s = {run[1] / base[1]:.2f}x ({goal})")


def default_job(args, tmp: str, job: dict) -> None:
    """The default job per backend against the bare loop, each a fresh process."""
    rounds = ["federation.num_rounds=5"] if args.quick else []
    bare = min((run_bare_process(rounds) for _ in range(2)), key=lambda r: r[1])
    for backend in ["inprocess"] if args.quick else ["inprocess", "ray"]:
        job[backend] = run_cli([*rounds, f"federation.backend={backend}"], f"{tmp}/job-{backend}")
        print(_ratio(f"default job{' (5 rounds)' if rounds else ''} backend={backend} vs bare torch FedAvg loop",
                     job[backend], bare, "goal <= 1.3x"))


def per_node_overhead(args, tmp: str, job: dict) -> None:
    """CPU per round of the in-process engine and of the bare loop as nodes grow."""
    print("in-process engine per round vs the bare loop's round (iid; CPU seconds of all threads, the figure a shared "
          "machine does not distort; the engine's wall and CPU both from the difference of runs of 1 and 3 rounds, so "
          f"the statistics round and the one-off set-up are left out; load average {os.getloadavg()[0]:.1f}):")
    engine_rounds(["partition=iid", "federation.num_nodes=5", "federation.num_rounds=1"])  # the process's first run loads the task: not a round's cost
    for num_nodes in (5, 50) if args.quick else (5, 50, 500, 1000):
        overrides = ["partition=iid", f"federation.num_nodes={num_nodes}"]
        cpu, wall = {}, {}
        for rounds in (1, 3):
            started, started_wall = time.process_time(), time.perf_counter()
            engine_rounds([*overrides, f"federation.num_rounds={rounds}"])
            cpu[rounds], wall[rounds] = time.process_time() - started, time.perf_counter() - started_wall
        engine_cpu, engine_wall = (cpu[3] - cpu[1]) / 2, (wall[3] - wall[1]) / 2
        _, bare_wall, bare_cpu = bare_fedavg([*overrides, "federation.num_rounds=3"])
        per_node = (engine_cpu - bare_cpu / 3) / num_nodes
        print(f"  {num_nodes:5d} nodes: {engine_cpu:.3f} CPU s a round vs bare {bare_cpu / 3:.3f} ({engine_cpu / (bare_cpu / 3):.2f}x); "
              f"overhead {1e3 * per_node:.2f} ms per node per round (its train and evaluate messages; goal <= 2 ms); "
              f"wall {engine_wall:.2f} s a round vs bare {bare_wall / 3:.2f} s (load {os.getloadavg()[0]:.1f})")


def multirun(args, tmp: str, job: dict) -> None:
    """A 4-seed Hydra multirun against one job."""
    if args.quick or "inprocess" not in job:
        return
    sweep = run_cli(["-m", "seed=0,1,2,3"], f"{tmp}/multirun")
    print(_ratio("astroscale-fl train -m seed=0,1,2,3 vs one job", sweep, job["inprocess"], "goal <= 4.2x"))


def many_nodes(args, tmp: str, job: dict) -> None:
    """1,000 nodes, 5 % of them training each round."""
    many = ["partition=iid", "federation.num_nodes=1000", "federation.fraction_train=0.05", "federation.num_rounds=5"]
    wall, cpu, peak = run_cli_rss(many, f"{tmp}/many")
    print(f"1000 nodes, fraction_train=0.05, 5 rounds, Hipparcos iid: wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {peak:.0f} MB "
          f"(goal <= 30 s wall on 2 cores; load {os.getloadavg()[0]:.1f})")


def profile_top(args, tmp: str, job: dict) -> None:
    """Where a 50-node federation's time goes (one worker, so the nodes' work shows)."""
    profile = cProfile.Profile()
    engine_rounds(["partition=iid", "federation.num_nodes=50", "federation.num_rounds=2"], workers=1, profile=profile)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
    print("profile, 50 nodes, one worker (top 15 by own time):")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-2400:])

if __name__ == "__main__":
    main()
