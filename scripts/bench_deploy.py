#!/usr/bin/env python
"""Per-round overhead of a deployment on loopback, and which part of it is ours.

    .venv/bin/python scripts/bench_deploy.py [--nodes 2] [--rounds 4] [--no-deploy] [overrides...]

1. Runs a local deployment (SuperLink + N SuperNodes, TLS + node auth; federation.fraction_evaluate=0
   so each round is one message per node) and reads each round's wall time from history.csv.
2. Times, in fresh processes (Flower starts one ClientApp process per message), what a message
   costs on a node: ``import flwr`` (Flower's own), ``import clients.app`` (ours: torch, pandas,
   our modules), and inside the handler: config + pipeline decoding, reading and encoding the
   node's rows (cold vs in-process cache vs the on-disk cache of astroscale_fl.deploy.cache),
   local training, and serialising the reply.
3. Prints overhead = round wall time - slowest node's training time, split into our part and
   the remainder (Flower: SuperNode pull interval, process spawn, FAB install, transport).

Default model (conf/model/mlp.yaml) and default task unless overrides say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable

_IMPORT_SNIPPET = """
import time; t=time.perf_counter()
import {module}
print(time.perf_counter()-t)
"""

_MESSAGE_SNIPPET = r"""
import json, sys, time
T = {}
t = time.perf_counter(); import clients.app; T["import_clients_app"] = time.perf_counter() - t
from flwr.app import Message, RecordDict, ConfigRecord
from astroscale_fl import config
from astroscale_fl.data import read_node_dir
from astroscale_fl.federation import client
from astroscale_fl.federation.messages import round_config, read_run_config, read_pipeline
from astroscale_fl.federation.records import model_to_arrays
from astroscale_fl.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.tasks import get_task
from astroscale_fl.training import make_optimizer, shuffled_batches, train_local
import numpy as np, torch
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # what Flower sets in a ClientApp process
args = json.loads(sys.argv[1])
cfg = config.validate(config.compose(args["overrides"]))
task = get_task(cfg.task)
frames = [read_node_dir(d) for d in args["dirs"]]
pipe = Pipeline.from_config(task, cfg) if hasattr(Pipeline, "from_config") else Pipeline.build(task, cfg.preprocess.scaling)
import pandas as pd
pipe = pipe.fit_statistics(pipe.compute_statistics(pd.concat(frames)))
rc = round_config(cfg, pipe)
model = build_model(cfg.model, len(pipe.features), int(cfg.seed))
out = {"nodes": []}
import inspect
from flwr.app import Context
wants_context = "context" in inspect.signature(client.handle_train).parameters
for d in args["dirs"]:
    node_config = {"data-dir": d}
    second = Context(1, 1, node_config, RecordDict(), {}) if wants_context else node_config
    conf = ConfigRecord(dict(rc)); conf["server-round"] = 1
    msg = Message(RecordDict({"arrays": model_to_arrays(model), "config": conf}), dst_node_id=1, message_type="train")
    R = {}
    t = time.perf_counter(); c = read_run_config(msg.content["config"]); p, key = read_pipeline(msg.content["config"]); R["decode_config_pipeline"] = time.perf_counter() - t
    client._FRAMES.clear(); client._TENSORS.clear()
    t = time.perf_counter(); client.handle_train(msg, second); R["handle_train_cold"] = time.perf_counter() - t
    t = time.perf_counter(); reply = client.handle_train(msg, second); R["handle_train_warm"] = time.perf_counter() - t
    client._FRAMES.clear(); client._TENSORS.clear()
    t = time.perf_counter(); tensors = client.node_tensors(c, node_config, p, key, torch.device("cpu")); R["read_encode_rows"] = time.perf_counter() - t
    from astroscale_fl.deploy.cache import cached_arrays
    arrays = {"train_x": tensors.train_x.numpy(), "train_y": tensors.train_y.numpy(), "val_x": tensors.val_x.numpy(), "val_y": tensors.val_y.numpy()}
    cached_arrays(d, key, lambda: arrays)
    t = time.perf_counter(); cached_arrays(d, key, lambda: 1 / 0); R["disk_cache_load"] = time.perf_counter() - t
    m = build_model(c.model, len(p.features), int(c.seed))
    opt = make_optimizer(m.parameters(), c.train.optimizer, c.train.lr, c.train.momentum, c.train.weight_decay)
    g = torch.Generator().manual_seed(1)
    b = shuffled_batches(len(tensors.train_y), int(c.train.batch_size), int(c.train.local_epochs), g)
    t = time.perf_counter(); train_local(m, opt, tensors.train_x, tensors.train_y, b); R["training"] = time.perf_counter() - t
    t = time.perf_counter(); rd = RecordDict({"arrays": model_to_arrays(m)}); _ = [a.data for a in rd["arrays"].values()]; R["serialise_reply"] = time.perf_counter() - t
    R["rows"] = int(len(tensors.train_y))
    out["nodes"].append(R)
out.update(T)
print("BENCH " + json.dumps(out))
"""


CPU: dict[str, float] = {}  # CPU seconds (user + sys) of the same commands: robust to a busy machine


def median_of(cmd: list[str], repeat: int, env: dict) -> float:
    import resource

    vals, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
        vals.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    CPU[cmd[-1]] = statistics.median(cpu)
    return statistics.median(vals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process repetitions (median)")
    parser.add_argument("--no-deploy", action="store_true", help="skip the deployment; only time message costs")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    env = dict(os.environ, PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    overrides = [f"federation.num_nodes={args.nodes}", f"federation.num_rounds={args.rounds}", "federation.fraction_evaluate=0",
                 "output.publish=false", "federation.metrics_port=0", *args.overrides]
    results: dict = {"overrides": overrides}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        from astroscale_fl import config
        from astroscale_fl.deploy.node_data import write_node_dirs

        dirs = [str(d) for d in write_node_dirs(config.validate(config.compose(overrides)), Path(tmp) / "nodes", args.nodes)]
        # fresh-process costs
        results["python_startup"] = median_of([PY, "-c", "pass"], args.repeat, env)
        results["import_flwr"] = median_of([PY, "-c", "import flwr.clientapp, flwr.app"], args.repeat, env)
        results["import_torch"] = median_of([PY, "-c", "import torch"], args.repeat, env)
        results["import_clients_app"] = median_of([PY, "-c", "import clients.app"], args.repeat, env)
        out = subprocess.run([PY, "-c", _MESSAGE_SNIPPET, json.dumps({"overrides": overrides, "dirs": dirs})],
                             capture_output=True, text=True, env=env, cwd=ROOT)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")]
        if not line:
            print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        results["message"] = json.loads(line[0][6:])
        results["import_cpu_seconds"] = dict(CPU)
        if not args.no_deploy:
            from astroscale_fl.deploy.local import LocalFederation, install_cleanup_handlers

            install_cleanup_handlers()

            run_dir = Path(tmp) / "run"
            with LocalFederation(Path(tmp) / "fed") as fed:
                fed.prepare(args.nodes, overrides)
                fed.start(args.nodes)
                t = time.perf_counter()
                code = fed.run(overrides, run_dir).wait(timeout=1800)
                results["deploy_total"] = time.perf_counter() - t
                if code != 0:
                    print(fed.log_text("run-1")[-3000:], file=sys.stderr)
                    return 1
            import csv

            rows = list(csv.DictReader((run_dir / "history.csv").open()))
            results["round_wall"] = [float(r["wall_seconds"]) for r in rows]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict) -> None:
    nodes = r["message"]["nodes"]
    train = max(n["training"] for n in nodes)
    ours_import = r["import_clients_app"] - r["import_flwr"]
    data = statistics.median(n["handle_train_cold"] - n["handle_train_warm"] for n in nodes)
    decode = statistics.median(n["decode_config_pipeline"] for n in nodes)
    ser = statistics.median(n["serialise_reply"] for n in nodes)
    disk = statistics.median(n["disk_cache_load"] for n in nodes)
    print(f"rows per node: {[n['rows'] for n in nodes]}; slowest node's local training: {train:.3f} s")
    print(f"fresh process: python {r['python_startup']:.2f} s, +flwr {r['import_flwr']:.2f} s, "
          f"torch alone {r['import_torch']:.2f} s, clients.app (ours, includes flwr+torch+pandas) {r['import_clients_app']:.2f} s")
    cpu = r.get("import_cpu_seconds", {})
    if cpu:
        print("CPU seconds of a fresh process: " + ", ".join(f"`{k}` {v:.2f}" for k, v in cpu.items()))
    print(f"per message, ours: imports beyond flwr {ours_import:.2f} s, read+encode rows {data:.3f} s "
          f"(disk cache load instead: {disk:.4f} s), config+pipeline decode {decode:.3f} s, serialise reply {ser:.4f} s")
    if "round_wall" in r:
        walls = r["round_wall"][1:] or r["round_wall"]
        wall = statistics.median(walls)
        overhead = wall - train
        ours = ours_import + data + decode + ser
        print(f"round wall time (median of rounds 2..): {wall:.2f} s  (all: {[round(w, 2) for w in r['round_wall']]})")
        print(f"per-round overhead = wall - slowest training = {overhead:.2f} s; ours ≈ {ours:.2f} s "
              f"(of which torch import {r['import_torch'] - r['python_startup']:.2f} s); Flower's remainder ≈ {overhead - ours:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
