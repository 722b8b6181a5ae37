#!/usr/bin/env python
"""Benchmark prediction: in process, from the command line and through the HTTP service.

    python scripts/bench_predict.py                 # trains + exports a small hipparcos_absmag model first
    python scripts/bench_predict.py --model DIR     # any exported model
    python scripts/bench_predict.py --quick         # fewer repetitions (smoke run)

Measures
- in-process latency per star: ``Predictor.predict_one`` and the service's single-star path
  (JSON bytes in -> validate -> predict -> JSON bytes out, no HTTP), median and p99;
- batch throughput (stars/s): ``Predictor.predict_frame`` on 100k rows, and the service's batch
  path on 10k rows (parse + validate + predict + encode);
- CLI cold start: ``python scripts/predict.py --model DIR v1 v2 ...`` wall time, median of 5,
  as ratios to ``python -c pass`` and ``python -c "import torch"``; and ``serve`` start to healthy;
- the service on loopback with 100 concurrent keep-alive clients (a separate asyncio httpx
  load generator process): closed loop (each client sends its next request when the previous
  answer arrives: saturation throughput, latency = clients / throughput) and open loop at a
  fixed rate (latency from each request's scheduled send time, so queueing is not hidden),
  each without and with micro-batching.

Rows are drawn uniformly inside the model card's valid ranges (reproducible seed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    a = np.asarray(seconds) * 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def timed(fn, n: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# --- the model and rows ---------------------------------------------------------------------


def train_small_model(directory: Path) -> Path:
    """A briefly trained hipparcos_absmag MLP, exported like the tests do."""
    import torch
    from omegaconf import OmegaConf

    from astroscale_fl import config, run_config
    from astroscale_fl.data.tasks import get_task
    from astroscale_fl.export.model_dir import build_card, export_model
    from astroscale_fl.learning.models import build_model
    from astroscale_fl.learning.training import make_optimizer, shuffled_batches, train_local
    from astroscale_fl.preprocessing import Pipeline

    task = get_task("hipparcos_absmag")
    frame = task.load(OmegaConf.create({"path": None, "min_parallax_snr": 10.0}))
    cfg = run_config.validate(config.compose(["model.widths=[32,16]"]))
    train = frame.iloc[:3000]
    pipeline = Pipeline.build(task).fit(train)
    x = torch.from_numpy(pipeline.transform_features(train))
    y = torch.from_numpy(pipeline.transform_target(train))
    model = build_model(cfg.model, x.shape[1], seed=0)
    train_local(model, make_optimizer(model.parameters(), "adam", 1e-3), x, y,
                shuffled_batches(len(y), 64, 2, torch.Generator().manual_seed(0)))
    card = build_card(task, cfg, pipeline, {"test_r2": 0.0}, {"server_lr": 1.0})
    return export_model(directory / "model", model, pipeline, card)


def sample_rows(card: dict, n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` request objects with values uniform inside each input's valid range."""
    rng = np.random.default_rng(seed)
    columns = {}
    for f in card["inputs"]:
        low, high = (f.get("valid_range") or [None, None])[:2]
        low = -1.0 if low is None or not math.isfinite(low) else float(low)
        high = low + 2.0 if high is None or not math.isfinite(high) else float(high)
        columns[f["name"]] = rng.uniform(low, low + (high - low) * 0.999, n)
    names = list(columns)
    return [{k: float(columns[k][i]) for k in names} for i in range(n)]


# --- load generator (runs in its own process) -----------------------------------------------


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: far cheaper per request than
    httpx, so that on a small machine the load generator does not starve the service."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), self.host.encode(), len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)


async def _load(url: str, bodies: list[bytes], clients: int, requests: int, warmup: int, rate: float, kind: str) -> dict:
    import httpx

    host, port = url.split("//", 1)[1].rsplit(":", 1)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        raws = [RawClient(host, int(port)) for _ in range(clients)]

        async def one(i: int, k: int) -> None:
            if kind == "raw":
                status, text = await raws[k].post("/predict", bodies[i % len(bodies)])
            else:
                r = await client.post("/predict", content=bodies[i % len(bodies)], headers=headers)
                status, text = r.status_code, r.content
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {text[:200]!r}")

        async def warm(k: int) -> None:  # opens every connection, lets both sides settle
            for i in range(k, max(warmup, clients), clients):
                await one(i, k)

        await asyncio.gather(*[warm(k) for k in range(clients)])
        latencies: list[float] = []
        errors = 0
        counter = iter(range(requests))
        start = time.perf_counter()

        async def closed_loop_worker(k: int) -> None:
            nonlocal errors
            for i in counter:
                t = time.perf_counter()
                try:
                    await one(i, k)
                except Exception:
                    errors += 1
                latencies.append(time.perf_counter() - t)

        async def open_loop_worker(k: int) -> None:
            nonlocal errors
            for i in range(k, requests, clients):  # request i is due at start + i / rate
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await one(i, k)
                except Exception:
                    errors += 1
                latencies.append(time.perf_counter() - due)

        worker = open_loop_worker if rate > 0 else closed_loop_worker
        await asyncio.gather(*[worker(k) for k in range(clients)])
        elapsed = time.perf_counter() - start
        for raw in raws:
            if raw.writer is not None:
                raw.writer.close()
    p50, p99 = percentiles(latencies)
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": p50, "p99_ms": p99, "max_ms": max(latencies) * 1e3}


def loadgen_main(args) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    result = asyncio.run(_load(args.url, bodies, args.clients, args.requests, args.warmup, args.rate, args.loadgen))
    print(json.dumps(result))
    return 0


# --- service ----------------------------------------------------------------------------------


def start_service(model: Path, extra: list[str], threads: int) -> tuple[subprocess.Popen, str, float]:
    import httpx

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "astroscale_fl.serve", "--model", str(model), "--port", "0",
                             "--log-level", "warning", "--threads", str(threads), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if "http://" not in line:
        raise SystemExit(f"service did not start: {line}{proc.stderr.read()}")
    url = line.split(" on ", 1)[1].split()[0]
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except httpx.TransportError:
            time.sleep(0.02)


def server_histogram(url: str) -> dict[float, float]:
    """Cumulative bucket counts of the service's own /predict latency histogram."""
    import httpx

    out = {}
    prefix = 'astroscale_fl_serve_request_duration_seconds_bucket{endpoint="/predict",le="'
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            out[float(line[len(prefix):].split('"')[0])] = float(line.split()[-1])
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bucket bound (ms) below which a fraction q of the requests between two scrapes fell."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    for bound, count in zip(bounds, counts):
        if total and count >= q * total:
            return bound * 1e3
    return math.nan


def run_load(url: str, bodies_file: Path, clients: int, requests: int, warmup: int, rate: float, kind: str) -> dict:
    before = server_histogram(url)
    out = subprocess.run([sys.executable, __file__, "--_loadgen", "--url", url, "--bodies", str(bodies_file),
                          "--clients", str(clients), "--requests", str(requests), "--warmup", str(warmup),
                          "--rate", str(rate), "--loadgen", kind], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    after = server_histogram(url)
    result["server_p50_ms"], result["server_p99_ms"] = bucket_quantile(before, after, 0.5), bucket_quantile(before, after, 0.99)
    return result


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="exported model directory (default: train a small hipparcos_absmag model)")
    p.add_argument("--calls", type=int, default=3000, help="single-star calls per in-process measurement")
    p.add_argument("--clients", type=int, default=100, help="concurrent HTTP clients")
    p.add_argument("--requests", type=int, default=20000, help="HTTP requests per load run (after warm-up)")
    p.add_argument("--rate", type=float, default=500.0, help="open-loop request rate (req/s) for the fixed-rate runs; 0 skips them")
    p.add_argument("--windows", type=lambda t: [float(x) for x in t.split(",") if x], default=[1.0],
                   help="micro-batch windows (ms, comma-separated; 0 = same event-loop turn) to load-test (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (in process and for the service)")
    p.add_argument("--skip-service", action="store_true", help="in-process and CLI numbers only")
    p.add_argument("--quick", action="store_true", help="smoke run: few repetitions")
    p.add_argument("--_loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=2000, help="HTTP warm-up requests per run")
    p.add_argument("--loadgen", choices=["raw", "httpx", "both"], default="both",
                   help="load generator client: raw asyncio streams (light), httpx, or both (httpx closed loop only)")
    args = p.parse_args(argv)
    if args._loadgen:
        return loadgen_main(args)
    if args.quick:
        args.calls, args.requests, args.warmup = 300, 2000, 200

    import pandas as pd
    import torch

    from astroscale_fl.export.predict import Predictor
    from astroscale_fl.serve import Service

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench_predict_")
    model_dir = args.model
    if model_dir is None:
        t = time.perf_counter()
        model_dir = train_small_model(Path(tmp.name))
        print(f"trained + exported a small hipparcos_absmag model in {time.perf_counter() - t:.1f} s: {model_dir}", flush=True)
    predictor = Predictor(model_dir)
    service = Service(predictor)
    rows = sample_rows(predictor.card, 100_000)
    names = predictor.inputs
    table: list[tuple[str, str, str]] = []  # (what, value, note)

    def add(what: str, value: str, note: str = "") -> None:
        table.append((what, value, note))
        print(f"  {what:<58} {value:>22}  {note}", flush=True)

    print(f"model {model_dir} ({predictor.card.get('task')}), torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

    # in process, one star
    values = [rows[0][n] for n in names]
    lat = percentiles(timed(lambda: predictor.predict_one(values), args.calls))
    add("Predictor.predict_one (1 star)", f"{lat[0]:.3f} / {lat[1]:.3f} ms", "median / p99")
    frame1 = pd.DataFrame([rows[0]])
    lat = percentiles(timed(lambda: predictor.predict_frame(frame1), args.calls))
    add("Predictor.predict_frame, 1-row DataFrame (prebuilt)", f"{lat[0]:.3f} / {lat[1]:.3f} ms", "median / p99")
    columns1 = {n: np.array([values[j]]) for j, n in enumerate(names)}
    try:
        lat = percentiles(timed(lambda: predictor.predict_frame(columns1), args.calls))
        add("Predictor.predict_frame, {column: 1-row array}", f"{lat[0]:.3f} / {lat[1]:.3f} ms", "median / p99")
    except Exception as exc:  # the pipeline takes DataFrames only
        add("Predictor.predict_frame, {column: 1-row array}", "n/a", f"not supported: {type(exc).__name__}")
    body = json.dumps(rows[0]).encode()
    lat = percentiles(timed(lambda: service.predict_single_body(body), args.calls))
    add("service single-star path (JSON in -> JSON out, no HTTP)", f"{lat[0]:.3f} / {lat[1]:.3f} ms",
        f"median / p99; columns as {'mapping' if service.columns_as_mapping else 'DataFrame'}")
    lat = percentiles(timed(lambda: service.parse_single(body), args.calls))
    add("  of which JSON parse + validation", f"{lat[0]:.4f} / {lat[1]:.4f} ms", "median / p99")
    rows64 = [[r[n] for n in names] for r in rows[:64]]
    lat = percentiles(timed(lambda: service.predict_rows(rows64), max(args.calls // 10, 30)))
    add("micro-batch forward pass, 64 stars", f"{lat[0]:.3f} ms", f"= {lat[0] / 64 * 1e3:.1f} us/star")

    # batches
    big = pd.DataFrame(rows)
    reps = 3 if args.quick else 5
    secs = statistics.median(timed(lambda: predictor.predict_frame(big), reps, warmup=1))
    add("Predictor.predict_frame, 100k rows", f"{len(big) / secs:,.0f} stars/s", f"{secs * 1e3:.0f} ms per call, median of {reps}")
    body10k = json.dumps(rows[:10_000]).encode()
    secs = statistics.median(timed(lambda: service.predict_batch_body(body10k), reps, warmup=1))
    add("service batch path, 10k rows (parse+validate+predict+encode)", f"{10_000 / secs:,.0f} stars/s", f"{secs * 1e3:.0f} ms per call")

    # command line cold start
    def wall(cmd: list[str]) -> float:
        times = []
        for _ in range(3 if args.quick else 5):
            t = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            times.append(time.perf_counter() - t)
            if out.returncode != 0:
                raise RuntimeError((out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1])
        return statistics.median(times)

    base = wall([sys.executable, "-c", "pass"])
    torch_t = wall([sys.executable, "-c", "import torch"])
    add("python -c pass", f"{base * 1e3:.0f} ms", "median of 5")
    add("python -c 'import torch'", f"{torch_t * 1e3:.0f} ms", f"{torch_t / base:.1f}x pass")
    try:
        cli = wall([sys.executable, str(ROOT / "scripts" / "predict.py"), "--model", str(model_dir), *map(repr, values)])
        add("python scripts/predict.py (one star, cold)", f"{cli * 1e3:.0f} ms", f"{cli / base:.1f}x pass, {cli / torch_t:.2f}x import torch")
    except RuntimeError as exc:
        add("python scripts/predict.py (one star, cold)", "failed", str(exc)[:120])

    if not args.skip_service:
        bodies_file = Path(tmp.name) / "bodies.jsonl"
        bodies_file.write_text("\n".join(json.dumps(r) for r in rows[:5000]))
        variants = [("plain", [])] + [(f"micro-batch {w:g} ms", ["--micro-batch", "--batch-window-ms", f"{w:g}"])
                                      for w in args.windows]
        for label, extra in variants:
            proc, url, startup = start_service(model_dir, extra, args.threads)
            try:
                if label == "plain":
                    add("serve: process start to healthy", f"{startup * 1e3:.0f} ms", "")
                runs = [("raw" if args.loadgen != "httpx" else "httpx", "closed loop", 0.0)]
                if args.rate > 0:
                    runs.append((runs[0][0], f"open loop {args.rate:g}/s", args.rate))
                if args.loadgen == "both":
                    runs.append(("httpx", "closed loop", 0.0))
                for kind, mode, rate in runs:
                    n = args.requests if rate == 0 else int(min(args.requests, args.rate * 20))
                    n = min(n, 3000) if kind == "httpx" else n  # httpx is the slow side; keep its runs short
                    r = run_load(url, bodies_file, args.clients, n, args.warmup, rate, kind)
                    add(f"HTTP {label}, {args.clients} clients, {mode}, {kind}", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms",
                        f"p50 / p99 at the client; {r['rps']:,.0f} req/s; {r['requests']} req, {r['errors']} errors, "
                        f"max {r['max_ms']:.0f} ms; in the service p50 <= {r['server_p50_ms']:g} ms, p99 <= {r['server_p99_ms']:g} ms")
            finally:
                proc.terminate()
                proc.wait(timeout=10)

    print("\n| measurement | value | note |\n|---|---:|---|")
    for what, value, note in table:
        print(f"| {what.strip()} | {value} | {note} |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
