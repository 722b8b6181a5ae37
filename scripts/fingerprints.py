"""Print a JSON of sha256 hashes of seeded, noise-free outputs, to show a refactor changes no result.

Runs `astroscale-fl train` (fedavg, fedprox, scaffold; vectorised and not; in-process and Ray; 3 rounds)
and hashes each run's `model/weights.pt` and `history.csv` (without its `wall_seconds` column, the one
field that is a clock reading); simulates a small catalog and hashes its Parquet file and the
`astroscale-fl preprocess` outputs of it.

    python scripts/fingerprints.py > before.json   # ... change the code ...
    python scripts/fingerprints.py > after.json && diff before.json after.json
    python scripts/fingerprints.py scaffold-ray-vec   # only these training runs (and the preprocess output)

A run that fails is tried once more (a loaded machine can time out Ray's start-up).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["federation.num_rounds=3", "federation.metrics_port=0", "output.publish=false", "seed=0"]
RUNS = {
    f"{strategy}-{backend}-{'vec' if vectorize else 'loop'}": [f"strategy={strategy}", f"federation.backend={backend}",
                                                              f"federation.vectorize={str(vectorize).lower()}"]
    for strategy in ("fedavg", "fedprox", "scaffold")
    for backend in ("inprocess", "ray")
    for vectorize in (True, False)
}
PREPROCESS = ["task.features=[ra,dec,teff,logg,fe_h,snr,parallax]", "task.target=z", "preprocess.scaling=standard"]
# history.csv columns that read a clock rather than a result
CLOCK_COLUMNS = {"wall_seconds"}


def sha256(data: bytes) -> str:
    """Hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def history_hash(path: Path) -> str:
    """sha256 of history.csv without its clock columns."""
    rows = list(csv.DictReader(path.read_text().splitlines()))
    out = io.StringIO()
    keep = [c for c in rows[0] if c not in CLOCK_COLUMNS]
    writer = csv.DictWriter(out, fieldnames=keep, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return sha256(out.getvalue().encode())


def run(args: list[str], cwd: Path, tries: int = 2) -> None:
    """Run a CLI command (again when it fails, up to ``tries`` times); stop with its stderr when it keeps failing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(tries):
        try:
            out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as exc:
            out = subprocess.CompletedProcess(args, 124, "", f"timed out after {exc.timeout} s")
        if out.returncode == 0:
            return
        print(f"{' '.join(args)} failed (exit {out.returncode}); {out.stderr[-300:]}", file=sys.stderr)
    raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    """Run everything (or the named training runs) in a temporary directory and print the hashes."""
    names = list(sys.argv[1:] if argv is None else argv) or list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; expected some of {list(RUNS)}")
    hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(["-m", "astroscale_fl.simulator", "--n", "20000", "--seed", "0", "--out", str(work / "stars.parquet")], work)
        hashes["simulate/stars.parquet"] = sha256((work / "stars.parquet").read_bytes())
        run(["-m", "astroscale_fl.cli", "preprocess", "--input", str(work / "stars.parquet"), "--output", str(work / "enc"),
             "--no-progress", *PREPROCESS], work)
        for path in sorted((work / "enc").iterdir()):
            hashes[f"preprocess/{path.name}"] = sha256(path.read_bytes())
        for name in names:
            out = work / name
            run(["-m", "astroscale_fl.cli", "train", *COMMON, *RUNS[name], f"hydra.run.dir={out}"], work)
            hashes[f"{name}/weights.pt"] = sha256((out / "model" / "weights.pt").read_bytes())
            hashes[f"{name}/history.csv"] = history_hash(out / "history.csv")
    print(json.dumps(hashes, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
