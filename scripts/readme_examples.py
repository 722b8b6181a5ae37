#!/usr/bin/env python
"""Generate the README's example outputs by running the examples, and check that the README shows them.

Each generated block sits between ``<!-- readme_examples: NAME -->`` and ``<!-- /readme_examples -->``
in README.md. The examples run against the model the default job publishes (``astroscale-fl train``
with the defaults, trained here into a temporary directory unless ``--models DIR`` names a folder
holding ``hipparcos_absmag/latest``):

- ``showcase``: ``python scripts/showcase.py`` (what ``scripts/run-default.sh`` prints last);
- ``predict``: the Predict section's single-star command and its answer.

    python scripts/readme_examples.py            # exit 1 and a diff when the README is stale
    python scripts/readme_examples.py --write    # rewrite the blocks

Numbers are compared to a relative 1e-6 (a float's last digits may differ between machines).
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MODEL = "models/hipparcos_absmag/latest"
#: The Predict section's example star (inputs in `--list-inputs` order).
PREDICT_VALUES = ["0.0011", "0.4107", "36.22", "-22.39", "8.6208", "0.0015", "0.011", "0.516", "0.59"]
BLOCK = re.compile(r"(<!-- readme_examples: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /readme_examples -->)", re.S)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _run(args: list[str], cwd: Path) -> str:
    out = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"error: `{shlex.join(args)}` failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    return out.stdout


def train_default(work: Path) -> Path:
    """Run the default job into ``work`` (publishing into ``work/models``); returns ``work``."""
    _run([sys.executable, "-m", "astroscale_fl.cli", "train", f"hydra.run.dir={work / 'run'}",
          f"output.models_dir={work / 'models'}", "federation.metrics_port=0"], ROOT)
    return work


def blocks(work: Path) -> dict[str, str]:
    """Every generated block's body (indented code), run in ``work`` (which holds ``models/``)."""
    showcase = _run([sys.executable, str(ROOT / "scripts" / "showcase.py"), MODEL], work)
    predict = _run([sys.executable, str(ROOT / "scripts" / "predict.py"), "--model", MODEL, *PREDICT_VALUES], work)
    indent = lambda text: "".join(f"    {line}\n" for line in text.splitlines())  # noqa: E731
    return {
        "showcase": "\n" + indent("bash scripts/run-default.sh\n...\n" + showcase) + "\n",
        "predict": "\n" + indent(f"python scripts/predict.py --model {MODEL} --list-inputs\n"
                                 f"python scripts/predict.py --model {MODEL} {' '.join(PREDICT_VALUES)}\n{predict}"
                                 f"python scripts/predict.py --model DIR --input stars.csv --output predictions.parquet\n"
                                 f"python scripts/predict.py 200.12 -47.33 5800 4.3 0.0 100 7.2   # models/survey_redshift/latest\n"
                                 '{"predicted_z": ...}') + "\n",
    }


def same(shown: str, generated: str) -> bool:
    """Whether two blocks agree: the same text around their numbers, the numbers written alike (an integer
    stays one: ``70761`` is not ``70761.0``) and equal to a relative 1e-6."""
    if NUMBER.sub("#", shown) != NUMBER.sub("#", generated):
        return False
    kind = lambda n: ("." in n, "e" in n.lower())  # noqa: E731
    return all(kind(a) == kind(b) and math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
               for a, b in zip(NUMBER.findall(shown), NUMBER.findall(generated)))


def update(readme: str, generated: dict[str, str]) -> tuple[str, list[str]]:
    """The README with every block replaced, and the names of the blocks that differed."""
    found = {m.group("name") for m in BLOCK.finditer(readme)}
    missing = sorted(set(generated) - found)
    if missing:
        raise SystemExit(f"error: {README}: no <!-- readme_examples: NAME --> block for {missing}")
    stale = [m.group("name") for m in BLOCK.finditer(readme) if not same(m.group("body"), generated[m.group("name")])]
    new = BLOCK.sub(lambda m: m.group(1) + generated[m.group("name")] + m.group(4), readme)
    return new, stale


def main(argv: list[str] | None = None) -> int:
    """Check (default) or ``--write`` the README's generated example blocks."""
    p = argparse.ArgumentParser(prog="readme_examples.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite the README's blocks")
    p.add_argument("--models", type=Path, help="a folder holding hipparcos_absmag/latest from the default job (skips training)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as tmp:
        work = Path(tmp)
        if args.models:
            (work / "models").symlink_to(args.models.resolve(), target_is_directory=True)
        else:
            train_default(work)
        generated = blocks(work)
    readme = README.read_text()
    new, stale = update(readme, generated)
    if args.write:
        README.write_text(new)
        print(f"rewrote {len(generated)} block(s) of {README}" + (f" ({', '.join(stale)} changed)" if stale else ""))
        return 0
    if stale:
        sys.stdout.writelines(difflib.unified_diff(readme.splitlines(True), new.splitlines(True), "README.md", "generated"))
        print(f"error: README.md example block(s) {stale} are stale; run python scripts/readme_examples.py --write",
              file=sys.stderr)
        return 1
    print(f"README.md example blocks {sorted(generated)} match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
