#!/usr/bin/env python
"""Deployment round time on loopback (TLS + node auth), and which part of it is Flower's waiting.

    .venv/bin/python scripts/bench_deploy.py [--nodes 2] [--rounds 10] [--warm] [--two-messages]
                                             [--fast-poll | --plain-poll] [--json PATH] [overrides...]

Runs a real local deployment (SuperLink + N SuperNodes through scripts/start-*.sh, TLS and node
authentication on), the default task and model unless overrides say otherwise, and reads:

- ``round_seconds``: each round's wall time from history.csv (training + its evaluation:
  with one message per round, round r's message also evaluates round r-1's model; the last round
  includes the final evaluate-only message), and their median ``round_seconds_median``;
- per message, from each node's status file (astroscale_fl.deploy.node_status): seconds in our
  handler (decode, data, evaluate, train, serialise) and seconds since the ClientApp process
  started (adds Python start-up and imports for a fresh ``flwr-clientapp``, or the fork for the
  warm launcher, plus Flower's Runtime API pull of the message; the SuperNode hands out the task
  before it has pulled the message's objects from the SuperLink, so with the warm launcher this
  also holds that transfer, which is Flower's transport, not our work);
- the split per round: ``ours`` = the slowest node's ClientApp process seconds in that round,
  ``flower_waiting`` = wall - ours (SuperNode pull interval (3 s sleep when idle), its 0.5 s reply
  polling, SuperExec/launcher polling, transport, the server's 0.2 s reply polling).

``--warm`` starts the SuperNodes with the warm ClientApp runtime (start-supernode.sh --warm);
``--two-messages`` sets federation.evaluate_in_train=false (the train + evaluate messages of before).
SuperNodes poll fast (``astroscale-fl node supernode``, start-supernode.sh ``--fast-poll``) with
``--warm`` or ``--fast-poll``; ``--plain-poll`` runs plain ``flower-supernode`` (3 s idle sleep).
The machine's load average is recorded: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def round_split(node_dirs: list[Path], walls: list[float]) -> list[dict]:
    """Per round: the slowest node's handler and ClientApp process seconds, and the rest (Flower's)."""
    from astroscale_fl.deploy.node_status import read_status

    per_node = [[m for m in read_status(d).get("messages", []) if m["kind"] != "query"] for d in node_dirs]
    out = []
    for r, wall in enumerate(walls, start=1):
        handler = max(sum(m["seconds"] for m in msgs if m["round"] == r) for msgs in per_node)
        process = max(sum(m.get("process_seconds") or m["seconds"] for m in msgs if m["round"] == r) for msgs in per_node)
        count = max(sum(1 for m in msgs if m["round"] == r) for msgs in per_node)
        out.append({"round": r, "wall": round(wall, 3), "messages_per_node": count, "ours_handler": round(handler, 3),
                    "ours_clientapp_process": round(process, 3), "flower_waiting": round(wall - process, 3)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warm", action="store_true", help="SuperNodes with the warm ClientApp runtime")
    parser.add_argument("--two-messages", action="store_true", help="federation.evaluate_in_train=false (train + evaluate)")
    poll = parser.add_mutually_exclusive_group()
    poll.add_argument("--fast-poll", dest="fast_poll", action="store_const", const=True,
                      help="SuperNodes with short idle/reply polls (default with --warm)")
    poll.add_argument("--plain-poll", dest="fast_poll", action="store_const", const=False,
                      help="plain flower-supernode (3 s idle sleep), also with --warm")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [f"federation.num_nodes={args.nodes}", f"federation.num_rounds={args.rounds}", "output.publish=false",
                 "federation.metrics_port=0", f"federation.evaluate_in_train={str(not args.two_messages).lower()}",
                 *args.overrides]
    from astroscale_fl.deploy.local import LocalFederation, install_cleanup_handlers

    install_cleanup_handlers()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        run_dir = Path(tmp) / "run"
        with LocalFederation(Path(tmp) / "fed", warm=args.warm, fast_poll=args.fast_poll) as fed:
            fed.prepare(args.nodes, overrides)
            fed.start(args.nodes)
            started = time.perf_counter()
            code = fed.run(overrides, run_dir).wait(timeout=3600)
            total = time.perf_counter() - started
            if code != 0:
                print(fed.log_text("run-1")[-3000:], file=sys.stderr)
                return 1
            walls = [float(r["wall_seconds"]) for r in csv.DictReader((run_dir / "history.csv").open())]
            split = round_split([fed.nodes_dir / f"node-{i}" for i in range(1, args.nodes + 1)], walls)
            metrics = json.loads((run_dir / "metrics.json").read_text())
    med = lambda key: round(statistics.median(s[key] for s in split), 3)  # noqa: E731
    results = {
        "nodes": args.nodes, "rounds": args.rounds, "warm_runtime": args.warm,
        "fast_poll": args.warm if args.fast_poll is None else args.fast_poll, "evaluate_in_train": not args.two_messages,
        "tls": True, "node_auth": True, "overrides": overrides,
        "round_seconds": [round(w, 3) for w in walls], "round_seconds_median": round(statistics.median(walls), 3),
        "split_median": {"ours_handler": med("ours_handler"), "ours_clientapp_process": med("ours_clientapp_process"),
                         "flower_waiting": med("flower_waiting")},
        "per_round": split, "run_seconds": round(total, 1), "test_r2": metrics["test_r2"],
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }
    s = results["split_median"]
    mode = (f"{'warm' if args.warm else 'cold'} runtime, {'fast' if results['fast_poll'] else 'plain'} SuperNode polls, "
            f"{'two messages' if args.two_messages else 'one message'} per round")
    print(f"{args.nodes} nodes, {args.rounds} rounds, {mode}, TLS + node auth (load average {load_before[0]:.1f}: shared machine)")
    print(f"round seconds: {results['round_seconds']}")
    print(f"median round {results['round_seconds_median']:.2f} s = ours {s['ours_clientapp_process']:.2f} s "
          f"(handler {s['ours_handler']:.2f} s, rest: process start/imports/fork + Flower's in-process message pull) "
          f"+ Flower's waiting {s['flower_waiting']:.2f} s; ours/round {s['ours_clientapp_process'] / results['round_seconds_median']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
