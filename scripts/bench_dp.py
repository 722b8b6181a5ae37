"""Time a local training epoch of the default MLP: non-DP vs DP-SGD, same tensor-slicing loop.

    .venv/bin/python scripts/bench_dp.py                      # CPU, 2 threads
    .venv/bin/python scripts/bench_dp.py --device cuda --repeats 50

Non-DP: ``train_local`` over ``shuffled_batches`` (a seeded permutation cut into batches).
DP: ``train_local_dp`` over ``poisson_batches`` (a Bernoulli mask per step, sample rate
batch/rows, as many steps as the non-DP epoch), per-sample clipping and Gaussian noise, with
each backend: ``ghost`` (our per-layer norms, the default), ``opacus`` (GradSampleModule hooks)
and ``opacus-functorch`` (Opacus' torch.func vmap+grad per-sample gradients). Epochs of all
variants are interleaved so background load hits them alike; the ratio uses medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from astroscale_fl.learning.models import MLP  # noqa: E402
from astroscale_fl.learning.training import make_optimizer, shuffled_batches, train_local  # noqa: E402
from astroscale_fl.privacy.dp_sgd import make_private, poisson_batches, train_local_dp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--rows", type=int, default=4400)
    parser.add_argument("--features", type=int, default=15)
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--repeats", type=int, default=30, help="timed epochs per variant (default 30)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["ghost", "opacus", "opacus-functorch"])
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device} but CUDA is not available", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, args.features, generator=gen).to(device)
    y = torch.randn(args.rows, generator=gen).to(device)
    steps = -(-args.rows // args.batch_size)
    q = args.batch_size / args.rows

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def build():
        torch.manual_seed(1)
        model = MLP(args.features, list(args.widths)).to(device)
        return model, make_optimizer(model.parameters(), args.optimizer, 1e-3)

    def run_plain(seed: int) -> float:
        model, opt = build()
        batches = list(shuffled_batches(args.rows, args.batch_size, 1, torch.Generator().manual_seed(seed)))
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        report = train_local(model, opt, x, y, iter(batches))
        sync()
        return (time.perf_counter() - start) / report.steps, (time.process_time() - cpu) / report.steps

    def run_dp(backend: str, seed: int) -> float:
        model, opt = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if backend == "opacus-functorch":
                from opacus import GradSampleModule
                from opacus.optimizers import DPOptimizer

                private = GradSampleModule(model, loss_reduction="mean", force_functorch=True)
                dp = DPOptimizer(opt, noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm,
                                 expected_batch_size=q * args.rows, generator=torch.Generator(device=device).manual_seed(seed))
            else:
                private, dp = make_private(model, opt, noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm,
                                           expected_batch_size=q * args.rows, noise_seed=seed, backend=backend)
            # the Poisson masks are drawn inside the timed loop: they are part of a DP step's cost
            sync()
            start, cpu = time.perf_counter(), time.process_time()
            report = train_local_dp(private, dp, x, y, poisson_batches(args.rows, q, steps, torch.Generator().manual_seed(seed)))
            sync()
        return (time.perf_counter() - start) / report.steps, (time.process_time() - cpu) / report.steps

    variants = {"non-dp": run_plain, **{b: (lambda seed, b=b: run_dp(b, seed)) for b in args.backends}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.warmup + args.repeats):
        for name, fn in variants.items():
            wall, cpu = fn(1000 + rep)
            if rep >= args.warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={device} threads={args.threads} rows={args.rows} features={args.features} widths={args.widths} "
          f"batch={args.batch_size} optimizer={args.optimizer} steps/epoch={steps} repeats={args.repeats} "
          f"torch={torch.__version__} load1={load:.2f}")
    base, base_min, base_cpu = statistics.median(times["non-dp"]), min(times["non-dp"]), statistics.median(cpu_times["non-dp"])
    print("wall = elapsed seconds per step; cpu = process CPU seconds per step (all threads; steadier on a busy machine)")
    print(f"{'variant':<18}{'wall median':>12}{'wall min':>11}{'cpu median':>12}{'DP/non-DP wall med':>20}{'wall min':>10}{'cpu med':>9}")
    for name in times:
        med, low, cpu = statistics.median(times[name]), min(times[name]), statistics.median(cpu_times[name])
        print(f"{name:<18}{med:>12.3e}{low:>11.3e}{cpu:>12.3e}{med / base:>19.2f}x{low / base_min:>9.2f}x{cpu / base_cpu:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
