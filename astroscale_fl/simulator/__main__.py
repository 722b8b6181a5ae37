"""CLI: ``python -m astroscale_fl.simulator --n 19000 --seed 0 --out FILE.parquet [--per-survey]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from astroscale_fl.errors import UserArgumentParser

from ..errors import ConfigError, report_user_errors
from .simulate import (
    DEFAULT_N_STARS,
    INPUT_COLUMNS,
    TARGET,
    ceiling_r2,
    prepare_tables,
    simulate_catalog,
    write_parquet,
)
from .surveys import SURVEY_NAMES

#: Catalogs at least this large show a progress bar (on a terminal).
PROGRESS_FROM_ROWS = 500_000


def build_parser() -> argparse.ArgumentParser:
    p = UserArgumentParser(
        prog="python -m astroscale_fl.simulator",
        description=(
            "Simulate the stars APOGEE, SDSS/SEGUE, RAVE and Gaia RVS observe in a model Milky Way "
            "(published density laws, kinematics and solar motion) and write them to Parquet. "
            f"Inputs: {', '.join(INPUT_COLUMNS)}; label: {TARGET} = v_r / c; plus survey and "
            "true_* columns."
        ),
    )
    p.add_argument("--n", type=int, default=DEFAULT_N_STARS,
                   help=f"total stars, split in the default survey mix (default {DEFAULT_N_STARS})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same table")
    p.add_argument("--out", required=True,
                   help="output .parquet file; with --per-survey, a directory receiving SURVEY.parquet")
    p.add_argument("--per-survey", action="store_true",
                   help="write one Parquet file per survey (one node each) instead of one file")
    p.add_argument("--surveys", default=",".join(SURVEY_NAMES),
                   help=f"comma-separated subset of {','.join(SURVEY_NAMES)} (default all)")
    p.add_argument("--no-truth", action="store_true",
                   help="leave out the true_* / population / expected_z columns")
    return p


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    surveys = [s.strip() for s in args.surveys.split(",") if s.strip()]
    if not surveys:
        raise ConfigError("--surveys is empty; expected e.g. apogee,sdss")
    tables_s = prepare_tables(surveys)
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]simulating stars"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=args.n < PROGRESS_FROM_ROWS or not sys.stderr.isatty(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("stars", total=args.n)
        df = simulate_catalog(args.n, seed=args.seed, surveys=surveys,
                              progress=lambda rows: bar.advance(task, rows))
    dt = time.perf_counter() - t0
    ceiling = ceiling_r2(df) if len(df) > 1 else float("nan")
    if args.no_truth:
        df = df[[*INPUT_COLUMNS, TARGET, "survey"]]
    out = Path(args.out)
    if args.per_survey:
        if out.suffix == ".parquet":
            raise ConfigError(f"--per-survey writes a directory of files; --out {out} looks like a file")
        for name in surveys:
            part = df[df["survey"] == name].reset_index(drop=True)
            write_parquet(part, out / f"{name}.parquet")
            print(f"wrote {out / f'{name}.parquet'}: {len(part)} stars")
    else:
        t1 = time.perf_counter()
        write_parquet(df, out)
        print(f"wrote {out}: {len(df)} stars ({time.perf_counter() - t1:.1f} s)")
    print(f"simulated {len(df)} stars in {dt:.2f} s after {tables_s:.1f} s building the sampling tables (once per "
          f"process, whatever the number of stars); ceiling R^2 (expected_z vs z) = {ceiling:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
