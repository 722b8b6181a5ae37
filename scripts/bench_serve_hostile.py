#!/usr/bin/env python
"""How much hostile bodies cost the predict service, as ratios.

    python scripts/bench_serve_hostile.py [--model DIR] [--bodies 10] [--keys 70000]

Starts ``astroscale-fl serve`` on 127.0.0.1, then measures

- a normal ``POST /predict`` on an idle service (median of 30);
- the same request sent while ``--bodies`` bodies of ``--keys`` unknown keys each (about 0.9 MB
  for 70,000) are in flight: its latency as a ratio to the idle one;
- the size of the answer to one such body as a ratio to the body's size.

Without ``--model`` a small hipparcos_absmag model is trained first (as ``bench_predict.py`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_predict import sample_rows, start_service, train_small_model


async def measure(url: str, good: dict, bodies: int, keys: int) -> dict:
    import httpx

    headers = {"content-type": "application/json"}
    normal = json.dumps(good).encode()
    hostile = json.dumps({**good, **{f"k{i}": 1 for i in range(keys)}}).encode()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=bodies + 2)) as client:
        async def timed(body: bytes) -> tuple[float, int, int]:
            t = time.perf_counter()
            r = await client.post("/predict", content=body, headers=headers)
            return time.perf_counter() - t, r.status_code, len(r.content)

        for _ in range(5):
            await timed(normal)
        idle = statistics.median([(await timed(normal))[0] for _ in range(30)])
        flood = [asyncio.create_task(timed(hostile)) for _ in range(bodies)]
        await asyncio.sleep(0.01)  # the flood is on the wire first
        stalled = await timed(normal)
        answers = await asyncio.gather(*flood)
    return {"idle_ms": idle * 1e3, "stalled_ms": stalled[0] * 1e3, "normal_status": stalled[1],
            "hostile_status": answers[0][1], "hostile_body_bytes": len(hostile), "hostile_answer_bytes": answers[0][2]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="exported model directory (default: train a small one)")
    p.add_argument("--bodies", type=int, default=10, help="hostile bodies in flight at once")
    p.add_argument("--keys", type=int, default=70_000, help="unknown keys per hostile body")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_hostile_") as tmp:
        model = args.model or train_small_model(Path(tmp))
        card = json.loads((model / "model_card.json").read_text())
        good = sample_rows(card, 1)[0]
        proc, url, _ = start_service(model, ["--max-body-bytes", str(4 << 20)], threads=1)
        try:
            r = asyncio.run(measure(url, good, args.bodies, args.keys))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"normal request, idle service:                 {r['idle_ms']:.1f} ms")
    print(f"normal request behind {args.bodies} hostile bodies:      {r['stalled_ms']:.1f} ms  "
          f"= {r['stalled_ms'] / r['idle_ms']:.0f}x idle (status {r['normal_status']})")
    print(f"answer to one hostile body ({r['hostile_body_bytes'] / 1e3:.0f} KB, status {r['hostile_status']}): "
          f"{r['hostile_answer_bytes'] / 1e3:.1f} KB = {r['hostile_answer_bytes'] / r['hostile_body_bytes']:.3f}x the body")
    return 0


if __name__ == "__main__":
    sys.exit(main())
