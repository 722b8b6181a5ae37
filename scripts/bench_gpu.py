"""GPU throughput of local training: plain torch vs our loop vs CUDA graphs vs vectorised nodes.

Prints rows/s and ratios (issue 13) for the default MLP (7 -> 128 -> 128 -> 1, Adam, lr 1e-3):

1. one node at ``--batch`` (1024): a minimal eager torch loop, ``train_local`` eager, ``train_local``
   with ``cuda_graph=True``, and the vectorised trainer with K=1 (graph);
2. K = 10 / 100 / 1000 nodes trained together (``train_stacked``, graph; K=100 also eager and vmap);
3. a DP-SGD step over a plain step (ghost clipping, Poisson batches of expected size ``--batch``):
   ``train_local_dp`` vs ``train_local`` eager, and the vectorised trainer (graph) at K=1 and K=100;
4. a round of 100 nodes x one local epoch of the simulated survey catalog (``--catalog`` stars,
   default 2M, ``train.batch_size`` 64): vectorised on the GPU vs node by node on ``--cpu-threads``
   CPU threads (the CPU time is measured on ``--cpu-nodes`` nodes and scaled to 100).

Rows are standardised with plain numpy (the round measures training, not preprocessing).
``--quick`` runs everything tiny (a CPU smoke test). Results also go to ``$OUT/bench_gpu.json`` when
``OUT`` is set. Usage: ``python scripts/bench_gpu.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
import warnings

import numpy as np
import torch
from torch import nn

from astroscale_fl.learning.cuda_graphs import GraphedStep
from astroscale_fl.learning.models import MLP
from astroscale_fl.learning.training import make_optimizer, shuffled_batches, train_local
from astroscale_fl.learning.vectorized import LocalOptimizer, NodeWork, StackedDP, train_stacked
from astroscale_fl.privacy.dp_sgd import make_private, poisson_batches, train_local_dp

RESULTS: dict[str, float] = {}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=2):
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def report(name, rows, seconds, base=None):
    rate = rows / seconds
    RESULTS[name] = rate
    ratio = f"  {rate / RESULTS[base]:6.2f}x {base}" if base else ""
    print(f"{name:<44} {rate / 1e6:10.3f} M rows/s{ratio}", flush=True)


def model_on(device, seed=0):
    """The default MLP, seeded."""
    torch.manual_seed(seed)
    return MLP(7, [128, 128]).to(device)


def one_node(device, rows, batch):
    x = torch.randn(rows, 7, device=device)
    y = x[:, 0] - 0.3 * x[:, 2] + 0.1 * torch.randn(rows, device=device)

    def minimal():
        model = model_on(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch.randperm(rows, device=device)
        for i in range(0, rows, batch):
            idx = order[i : i + batch]
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()

    def minimal_graphed():  # the same minimal loop, whole step captured (capturable Adam): the hardware's pace
        model = model_on(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
        order = torch.randperm(rows, device=device)[: rows // batch * batch].view(-1, batch)
        counter = torch.zeros(1, dtype=torch.long, device=device)

        def step():
            idx = order.index_select(0, counter).squeeze(0)
            counter.add_(1)
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()

        GraphedStep(step, device).run(order.shape[0])

    def ours(graph):
        def run():
            model = model_on(device)
            train_local(model, make_optimizer(model.parameters(), "adam", 1e-3), x, y,
                        shuffled_batches(rows, batch, 1, torch.Generator().manual_seed(0)), cuda_graph=graph)
        return run

    def stacked():
        model = model_on(device)
        nodes = [NodeWork(x, y, list(shuffled_batches(rows, batch, 1, torch.Generator().manual_seed(0))))]
        train_stacked(model, nodes, LocalOptimizer("adam", 1e-3), cuda_graph=True)

    print(f"-- one node, {rows:,} rows on {device}, batch {batch}")
    report("plain torch eager", rows, timed(minimal, device))
    report("train_local eager", rows, timed(ours(False), device), "plain torch eager")
    if device.type == "cuda":
        report("plain torch, whole step in a CUDA graph", rows, timed(minimal_graphed, device), "plain torch eager")
        report("train_local cuda_graph", rows, timed(ours(True), device), "plain torch eager")
        report("vectorised K=1 (graph)", rows, timed(stacked, device), "plain torch eager")


def node_work(device, num_nodes, rows_per_node, batch, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(num_nodes * rows_per_node, 7, device=device, generator=gen)
    y = x[:, 0] - 0.3 * x[:, 2]
    return [NodeWork(x[k * rows_per_node : (k + 1) * rows_per_node], y[k * rows_per_node : (k + 1) * rows_per_node],
                     list(shuffled_batches(rows_per_node, batch, 1, torch.Generator().manual_seed(k))))
            for k in range(num_nodes)]


def vectorised(device, sizes, steps, batch):
    print(f"-- K nodes trained together, {steps} steps of batch {batch} each")
    spec = LocalOptimizer("adam", 1e-3)
    for k in sizes:
        nodes = node_work(device, k, steps * batch, batch)
        rows = k * steps * batch
        graph = device.type == "cuda"
        report(f"vectorised K={k}{' (graph)' if graph else ''}", rows,
               timed(lambda: train_stacked(model_on(device), nodes, spec, cuda_graph=graph), device))
        if k == 100:
            def node_by_node():
                for node in nodes:
                    model = model_on(device)
                    train_local(model, make_optimizer(model.parameters(), "adam", 1e-3), node.features, node.target,
                                iter(node.batches), cuda_graph=graph)
            report("node by node K=100 (train_local)", rows, timed(node_by_node, device, repeats=1))
            RESULTS["vectorised K=100 / node by node"] = RESULTS[f"vectorised K=100{' (graph)' if graph else ''}"] / RESULTS["node by node K=100 (train_local)"]
            print(f"{'  vectorised / node by node':<44} {RESULTS['vectorised K=100 / node by node']:10.2f}x")
            report("vectorised K=100 eager", rows, timed(lambda: train_stacked(model_on(device), nodes, spec), device))
            report("vectorised K=100 vmap eager", rows, timed(lambda: train_stacked(model_on(device), nodes, spec, forward="vmap"), device))
            if graph:
                report("vectorised K=100 vmap (graph)", rows,
                       timed(lambda: train_stacked(model_on(device), nodes, spec, forward="vmap", cuda_graph=True), device))


def dp_cost(device, rows, batch, steps, num_nodes):
    print(f"-- DP-SGD step / plain step, Poisson batches of expected size {batch} ({rows:,} rows per node)")
    q = batch / rows
    x = torch.randn(rows, 7, device=device)
    y = x[:, 0] - 0.3 * x[:, 2]
    poisson = [list(poisson_batches(rows, q, steps, torch.Generator().manual_seed(k))) for k in range(num_nodes)]
    plain = [list(shuffled_batches(rows, batch, 1, torch.Generator().manual_seed(k)))[:steps] for k in range(num_nodes)]
    clip = 1.0

    def eager(private):
        model = model_on(device)
        opt = make_optimizer(model.parameters(), "adam", 1e-3)
        if not private:
            return lambda: train_local(model, opt, x, y, iter(plain[0]))
        wrapped, dp = make_private(model, opt, noise_multiplier=1.0, max_grad_norm=clip, expected_batch_size=batch, noise_seed=0, backend="ghost")
        return lambda: train_local_dp(wrapped, dp, x, y, iter(poisson[0]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_plain = timed(eager(False), device) / steps
        t_dp = timed(eager(True), device) / steps
    print(f"{'train_local eager step':<44} {t_plain * 1e3:10.3f} ms")
    print(f"{'train_local_dp (ghost) eager step':<44} {t_dp * 1e3:10.3f} ms  {t_dp / t_plain:6.2f}x plain")
    RESULTS["dp/plain eager"] = t_dp / t_plain
    graph = device.type == "cuda"
    spec = LocalOptimizer("adam", 1e-3)
    for k in (1, num_nodes):
        nodes_plain = [NodeWork(x, y, plain[i]) for i in range(k)]
        nodes_dp = [NodeWork(x, y, poisson[i]) for i in range(k)]
        dp = StackedDP((1.0,) * k, clip, (float(batch),) * k, noise_seed=0)
        t_plain = timed(lambda: train_stacked(model_on(device), nodes_plain, spec, cuda_graph=graph), device) / steps
        t_dp = timed(lambda: train_stacked(model_on(device), nodes_dp, spec, dp=dp, cuda_graph=graph), device) / steps
        tag = f"vectorised K={k}{' graph' if graph else ''}"
        print(f"{tag + ' plain step':<44} {t_plain * 1e3:10.3f} ms")
        print(f"{tag + ' DP step':<44} {t_dp * 1e3:10.3f} ms  {t_dp / t_plain:6.2f}x plain")
        RESULTS[f"dp/plain K={k}"] = t_dp / t_plain


def catalog_round(device, stars, num_nodes, batch, cpu_threads, cpu_nodes):
    from astroscale_fl.simulator.simulate import INPUT_COLUMNS, TARGET, simulate_catalog

    start = time.perf_counter()
    frame = simulate_catalog(n_stars=stars, seed=0)
    raw = frame[INPUT_COLUMNS].to_numpy(np.float64)
    x = ((raw - raw.mean(0)) / raw.std(0)).astype(np.float32)
    z = frame[TARGET].to_numpy(np.float64)
    y = ((z - z.mean()) / z.std()).astype(np.float32)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), num_nodes)
    print(f"-- a round: {num_nodes} nodes x 1 local epoch of the {len(y):,}-star survey catalog, batch {batch} "
          f"(simulated in {time.perf_counter() - start:.1f} s)")
    node_rows = [(torch.from_numpy(x[p]), torch.from_numpy(y[p])) for p in parts]
    batches = [list(shuffled_batches(len(p), batch, 1, torch.Generator().manual_seed(k))) for k, p in enumerate(parts)]
    spec = LocalOptimizer("adam", 1e-3)
    on_device = [(a.to(device), b.to(device)) for a, b in node_rows]
    nodes = [NodeWork(a, b, bs) for (a, b), bs in zip(on_device, batches)]
    graph = device.type == "cuda"
    t_vec = timed(lambda: train_stacked(model_on(device), nodes, spec, cuda_graph=graph), device, repeats=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads)
    cpu = torch.device("cpu")

    def node_by_node():
        for k in range(cpu_nodes):
            model = model_on(cpu)
            train_local(model, make_optimizer(model.parameters(), "adam", 1e-3), *node_rows[k], iter(batches[k]))

    t_cpu = timed(node_by_node, cpu, repeats=1) * num_nodes / cpu_nodes
    torch.set_num_threads(threads)
    print(f"{'vectorised on ' + device.type:<44} {t_vec:10.3f} s  ({len(y) / t_vec / 1e6:.1f} M rows/s)")
    print(f"{f'node by node, {cpu_threads} CPU threads (x{num_nodes}/{cpu_nodes})':<44} {t_cpu:10.3f} s  "
          f"{t_cpu / t_vec:6.1f}x slower")
    RESULTS["round seconds vectorised"] = t_vec
    RESULTS["round seconds cpu"] = t_cpu
    RESULTS["round speed-up"] = t_cpu / t_vec


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--catalog", type=int, default=2_000_000, help="stars in the simulated survey catalog")
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--cpu-nodes", type=int, default=10, help="nodes timed on the CPU (scaled to 100)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["one", "vec", "dp", "round"])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    quick = args.quick
    sections = {
        "one": lambda: one_node(device, 32 * args.batch if quick else 1024 * args.batch, args.batch),
        "vec": lambda: vectorised(device, (10, 100) if quick else (10, 100, 1000), 2 if quick else 8, 64 if quick else args.batch),
        "dp": lambda: dp_cost(device, 8192 if quick else 65536, 256 if quick else args.batch, 8 if quick else 64, 4 if quick else 100),
        "round": lambda: catalog_round(device, 20_000 if quick else args.catalog, 100, 64, args.cpu_threads, 2 if quick else args.cpu_nodes),
    }
    for name, section in sections.items():
        if name in args.skip:
            continue
        try:
            section()
        except Exception:  # a failing section must not hide the others' figures
            traceback.print_exc()
            RESULTS[f"{name} failed"] = 1.0
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_gpu.json"), "w") as fh:
            json.dump(RESULTS, fh, indent=1)


if __name__ == "__main__":
    main()
