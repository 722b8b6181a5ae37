"""The route of one train message through a node: the project modules ``client.handle_train`` enters, in order.

Runs a 2-round, 2-node in-process federation (not vectorised) and profiles the first train message
of round ROUND (1: cold caches, the node encodes its rows; 2: the steady-state route). Prints the
modules in order (consecutive calls within one module merged, and a loop's repeats, such as the
batch loop's training -> steps -> models, kept once), the number of distinct modules, of module
visits, and of climbs (a step from a module to one in a higher layer of ``tests/test_layers.py``'s
LAYERS).

    python scripts/train_route.py [ROUND]
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_layers  # noqa: E402

from astroscale_fl.federation import client  # noqa: E402

PACKAGES = tuple(str(ROOT / p) for p in test_layers.PACKAGES)
ROUND = int(sys.argv[1]) if len(sys.argv) > 1 else 2
route: list[str] = []
lock = threading.Lock()
calls = {"n": 0}


def _module(filename: str) -> str | None:
    if not filename.startswith(PACKAGES):
        return None
    return test_layers.module_name(Path(filename))


def _traced(original):
    def handle_train(msg, context):
        with lock:
            calls["n"] += 1
            mine = int(msg.content["config"]["server-round"]) == ROUND and not route
            if mine:
                route.append("<start>")
        if not mine:
            return original(msg, context)

        def profile(frame, event, _arg):
            if event == "call":
                name = _module(frame.f_code.co_filename)
                if name and route[-1] != name:
                    route.append(name)

        sys.setprofile(profile)
        try:
            return original(msg, context)
        finally:
            sys.setprofile(None)

    return handle_train


def without_loops(modules: list[str], longest: int = 4) -> list[str]:
    """``modules`` with each directly repeated run of up to ``longest`` modules kept once."""
    out = list(modules)
    changed = True
    while changed:
        changed = False
        for k in range(1, longest + 1):
            i = 0
            while i + 2 * k <= len(out):
                if out[i:i + k] == out[i + k:i + 2 * k]:
                    del out[i + k:i + 2 * k]
                    changed = True
                else:
                    i += 1
    return out


def main() -> int:
    """Run the federation, print the route as JSON."""
    client.handle_train = _traced(client.handle_train)
    from astroscale_fl.cli import main as cli

    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):
        try:
            cli(["train", "federation.num_rounds=2", "federation.num_nodes=2", "federation.vectorize=false",
                 "federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false", f"hydra.run.dir={out}"])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    modules = without_loops(route[1:])
    layers = [test_layers.layer_of(m) for m in modules]
    climbs = sum(b > a for a, b in zip(layers, layers[1:]))
    print(json.dumps({"modules_in_order": modules, "distinct_modules": len(set(modules)), "visits": len(modules),
                      "climbs_up_a_layer": climbs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
