"""``astroscale-fl preprocess``: encode a table (larger than memory) into tensor files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from astroscale_fl.atomic import check_writable_folder
from astroscale_fl.errors import ConfigError, DataError, UserArgumentParser, report_user_errors

DESCRIPTION = """Fit the configured preprocessing on --input (a .parquet file, a directory of them, or a
small .csv) in record batches (or on preprocess.reference, a public table), or apply a fitted
--preprocessing JSON, and write
OUTPUT/features.npy, target.npy (when the table has the task's target), row_ids.npy,
preprocessing.json and quarantine.parquet (rows failing validation, with column and reason);
with --arrow also OUTPUT/features.arrow (Arrow IPC / Feather v2, uncompressed: memory-mappable),
one float32 column per feature plus target and row_id, for consumers that want named columns.
Memory stays at one batch (preprocess.chunk_rows rows) whatever the table's size, plus at most
preprocess.cache_bytes of decoded batches kept from the fit pass for the encoding pass.

Overrides are the training run's, e.g.
  astroscale-fl preprocess --input stars/ --output enc/ task=catalog task.path=stars/ \\
      'task.features=[ra,dec,teff,logg,fe_h,snr,parallax]' task.target=z preprocess.scaling=standard"""


def _parser() -> argparse.ArgumentParser:
    parser = UserArgumentParser(prog="astroscale-fl preprocess", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="table to encode: .parquet file, directory of .parquet files, or .csv")
    parser.add_argument("--output", required=True, help="directory receiving the tensor files")
    parser.add_argument("--preprocessing", help="a fitted preprocessing.json to apply instead of fitting on --input")
    parser.add_argument("--arrow", action="store_true",
                        help="also write OUTPUT/features.arrow (Arrow IPC, uncompressed: named feature columns + target + row_id)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides (task=..., preprocess.*=...)")
    return parser


def check_output(source: str | Path, output: str | Path) -> None:
    """``--output``: a folder that can be made and written, apart from the input (checked before any work)."""
    src, out = Path(source).resolve(), Path(output).resolve()
    if out == src and src.is_file():
        raise ConfigError(f"--output {output}: is the --input file; name a folder for the tensor files")
    if out == src or src in out.parents:
        raise ConfigError(f"--output {output}: inside the input {source} (it would write into the input dataset); "
                          f"name a folder outside it")
    check_writable_folder(output, "--output")


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the command; one summary line on stdout."""
    args = _parser().parse_args(argv)
    from astroscale_fl import config, run_config
    from astroscale_fl.data.tasks import get_task
    from astroscale_fl.data.tensor_files import encode_table
    from astroscale_fl.preprocessing import Pipeline
    from astroscale_fl.preprocessing.reference import KEY, fit_reference, load_fitted
    from astroscale_fl.preprocessing.stream import count_rows

    check_output(args.input, args.output)
    overrides = list(args.overrides)
    if not any(o.startswith("task=") for o in overrides):  # default: the input is a catalog task's table
        overrides = ["task=catalog", *([] if any(o.startswith("task.path=") for o in overrides) else [f"task.path={args.input}"]), *overrides]
    cfg = run_config.validate(config.compose(overrides))
    task = get_task(cfg.task)
    reference = cfg.preprocess.get("reference")
    if args.preprocessing and reference:
        raise ConfigError(f"--preprocessing and {KEY} both give the fitted preprocessing; give one of them")
    if args.preprocessing:
        path = Path(args.preprocessing)
        if not path.is_file():
            raise ConfigError(f"--preprocessing: {path} not found")
        pipeline = load_fitted(path, "--preprocessing", Pipeline.from_config(task, cfg), task.name)
    elif reference:
        pipeline, _ = fit_reference(task, cfg, reference)  # fitted on the public table: --input is only encoded
    else:
        pipeline = Pipeline.from_config(task, cfg)
    fitted = bool(args.preprocessing or reference)
    total = count_rows(args.input)
    passes = 1 if fitted else 2
    id_column = cfg.task.get("id_column") if cfg.task.name == "catalog" else None
    show = not args.no_progress and sys.stderr.isatty()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("preprocess"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=not show) as bar:
        handle = bar.add_task("rows", total=total * passes)
        try:
            summary = encode_table(args.input, pipeline, args.output, fit=not fitted,
                                   chunk_rows=cfg.preprocess.chunk_rows, id_column=id_column,
                                   progress=lambda n: bar.advance(handle, n), arrow=args.arrow,
                                   cache_bytes=cfg.preprocess.cache_bytes)
        except OSError as exc:  # writing (a full disk, a name too long): reading errors are DataErrors
            if not str(exc.filename or "").startswith(str(Path(args.output).resolve().parent)):
                raise
            raise DataError(f"--output {args.output}: cannot write ({exc.strerror or exc})") from None
    print(f"preprocess: {summary.line()} -> {args.output}")
    return 0
