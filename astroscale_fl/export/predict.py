"""Predictions from an exported model directory: one star from the command line, or a table.

``python scripts/predict.py --model DIR V1 V2 ...`` prints ``{"predicted_<target>": value}``
for values given in the order of the model card's ``inputs``. ``--input FILE --output FILE``
predicts every row of a CSV or Parquet table: the output keeps the input's rows in order and
adds ``predicted_<target>``; rows with invalid inputs, or whose prediction is not finite, get no
prediction (an empty cell) and are listed, with the reason, in ``<output>.quarantine.csv``. A
single star whose prediction is not finite is an error: ``NaN`` is never printed as JSON.

The model directory is verified first (:func:`~astroscale_fl.export.model_dir.load_exported`): any
problem with it is one line and exit 2. ``--output`` may not name the input file (nor its
quarantine), however the path is spelled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from astroscale_fl.atomic import atomic_path
from astroscale_fl.data.tables import SUFFIXES, read_table, write_table
from astroscale_fl.errors import DataError, UserArgumentParser, one_line, report_user_errors
from astroscale_fl.export.model_dir import load_exported
from astroscale_fl.learning.training import predict as model_predict

DEFAULT_TASK = "survey_redshift"


class Predictor:
    """An exported model ready to predict: raw inputs in, target units out."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.model, self.pipeline, self.card = load_exported(self.model_dir, device)
        self.device = torch.device(device)
        self.inputs = [f["name"] for f in self.card["inputs"]]
        self.ranges = {f["name"]: (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))
                       for f in self.card["inputs"] for lo, hi in [f["valid_range"]]}
        self.target = self.card["target"]["name"]
        self.output_name = f"predicted_{self.target}"
        self._check_pipeline()

    def _check_pipeline(self) -> None:
        """Predict one mid-range star, so that a pipeline that cannot transform fails now, in one line."""
        mid = {name: np.array([0.0 if not math.isfinite(lo + hi) else (lo + hi) / 2], dtype=np.float64)
               for name, (lo, hi) in self.ranges.items()}
        try:
            self.predict_frame(mid)
        except Exception as exc:
            raise DataError(f"{self.model_dir}: the model cannot predict ({type(exc).__name__}: {one_line(str(exc))[:160]})") from None

    def predict_frame(self, frame) -> np.ndarray:
        """Predictions (target units) for every row of a DataFrame (or mapping of column -> array)."""
        features = torch.from_numpy(self.pipeline.transform_features(frame)).to(self.device)
        return self.pipeline.target.inverse(model_predict(self.model, features))

    def check_values(self, values: dict[str, float]) -> None:
        """Raise :class:`DataError` naming the first input that is non-finite or out of range."""
        for name in self.inputs:
            value = values[name]
            low, high = self.ranges[name]
            if not math.isfinite(value):
                raise DataError(f"input {name}: expected a finite number, got {value}")
            if not low <= value <= high:
                raise DataError(f"input {name}: {value} is outside the valid range [{low}, {high}]")

    def predict_one(self, values: list[float]) -> float:
        """Prediction for one object; ``values`` in the model card's input order."""
        row = dict(zip(self.inputs, values, strict=True))
        self.check_values(row)
        value = float(self.predict_frame({k: np.array([v], dtype=np.float64) for k, v in row.items()})[0])
        if not math.isfinite(value):
            raise DataError(f"{self.model_dir}: the model's prediction for these inputs is {value}, not a finite number; "
                            "nothing printed")
        return value

    def invalid_reasons(self, frame: pd.DataFrame) -> pd.Series:
        """Per row: '' when all inputs are valid, else why not (first problem per row)."""
        reasons = pd.Series("", index=frame.index, dtype=object)
        for name in reversed(self.inputs):
            raw = frame[name]
            values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
            low, high = self.ranges[name]
            non_numeric = values.isna() & raw.notna()
            reasons[~np.isfinite(values)] = f"{name}: missing or non-finite"
            reasons[non_numeric] = f"{name}: not a number"
            out = np.isfinite(values) & ((values < low) | (values > high))
            reasons[out] = f"{name}: outside [{low}, {high}]"
        return reasons


def predict_table(predictor: Predictor, input_path: Path, output_path: Path) -> tuple[int, int]:
    """Batch prediction; returns (rows predicted, rows quarantined)."""
    frame = read_table(input_path)
    missing = [c for c in predictor.inputs if c not in frame.columns]
    if missing:
        raise DataError(f"{input_path}: missing input column(s) {missing}; expected columns {predictor.inputs}")
    reasons = predictor.invalid_reasons(frame)
    ok = (reasons == "").to_numpy()
    predictions = np.full(len(frame), np.nan)
    if ok.any():
        clean = frame.loc[ok, predictor.inputs].apply(pd.to_numeric).astype(np.float64)
        predictions[ok] = predictor.predict_frame(clean)
        broken = ok & ~np.isfinite(predictions)
        if broken.any():  # a finite input the model maps to inf/NaN: quarantined, not written as a number
            reasons[broken] = [f"{predictor.output_name}: model output is {v}, not a finite number" for v in predictions[broken]]
            predictions[broken] = np.nan
            ok = ok & ~broken
    out = frame.copy()
    out[predictor.output_name] = predictions
    quarantine = Path(f"{output_path}.quarantine.csv")
    with _writing(output_path):
        if (~ok).any():
            rejected = frame.loc[~ok].copy()
            rejected.insert(0, "row", np.flatnonzero(~ok) + 1)
            rejected["reason"] = reasons[~ok].to_numpy()
            with atomic_path(quarantine) as tmp:
                rejected.to_csv(tmp, index=False)
        else:
            quarantine.unlink(missing_ok=True)
        write_table(out, output_path)
    return int(ok.sum()), int((~ok).sum())


@contextlib.contextmanager
def _writing(output_path: Path) -> Iterator[None]:
    """An OS refusal while writing ``--output`` (permissions, a read-only or full disk) as one line."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"--output {output_path}: cannot write ({exc.strerror or exc}: {exc.filename or output_path})") from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (relative, ``..``, symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: compare where they would be
        return a.resolve() == b.resolve()


def check_batch_paths(input_path: Path, output_path: Path) -> None:
    """Before anything is read or written: refuse an ``--output`` that cannot be written as a table
    or that (or whose quarantine file) would overwrite ``--input``."""
    if output_path.suffix.lower() not in SUFFIXES:
        raise DataError(f"--output {output_path}: expected a .csv or .parquet file")
    if not output_path.parent.is_dir():
        raise DataError(f"--output {output_path}: directory {output_path.parent} does not exist")
    if output_path.is_dir():
        raise DataError(f"--output {output_path}: is a directory; give a .csv or .parquet file name")
    for written in (output_path, Path(f"{output_path}.quarantine.csv")):
        if _same_file(input_path, written):
            raise DataError(f"--output {output_path}: would overwrite --input {input_path} ({written} is the input file); "
                            "choose another output path")


def check_device(device: str) -> torch.device:
    """``--device`` as a torch device that exists here."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise DataError(f"--device {device}: not usable here ({one_line(str(exc))[:120]}); try --device cpu") from None
    return dev


def default_model_dir(task: str) -> Path:
    """Where ``astroscale-fl train`` publishes the latest model of a task."""
    return Path("models") / task / "latest"


#: Any spelling of a negative number (``-3``, ``-.5``, ``-1e-3``, ``-inf``, ``-nan``): argparse takes
#: only ``-3`` and ``-0.5`` for values and the rest for unknown options.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?|inf(inity)?|nan)$", re.IGNORECASE)


class _ValuesParser(UserArgumentParser):
    """The predict parser: a negative number in any spelling is an input value, never an option."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER  # argparse's hook for "looks like a negative number"


def parser() -> argparse.ArgumentParser:
    """The ``astroscale-fl predict`` argument parser."""
    p = _ValuesParser(
        prog="astroscale-fl predict",
        description="Predict with an exported model directory. Give the input values in the order "
        "`--list-inputs` prints, or a whole table with --input/--output.",
    )
    p.add_argument("values", nargs="*", help="input values, in the model card's order")
    p.add_argument("--model", type=Path, default=None, help="exported model directory (default: models/<task>/latest)")
    p.add_argument("--task", default=DEFAULT_TASK, help=f"task whose latest published model to use when --model is not given (default: {DEFAULT_TASK})")
    p.add_argument("--input", type=Path, help="CSV or Parquet table to predict (batch mode)")
    p.add_argument("--output", type=Path, help="where to write the batch predictions (.csv or .parquet)")
    p.add_argument("--list-inputs", action="store_true", help="print the expected inputs (name and unit) and exit")
    p.add_argument("--device", default="cpu", help="torch device for prediction (default: cpu)")
    return p


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """Entry for ``astroscale-fl predict`` and ``scripts/predict.py``."""
    args = parser().parse_args(argv)
    model_dir = args.model or default_model_dir(args.task)
    if args.model is None and not model_dir.is_dir():
        raise DataError(f"no published model for task {args.task} at {model_dir}; make one with `astroscale-fl train task={args.task}`")
    if args.input and args.output:
        check_batch_paths(args.input, args.output)
    predictor = Predictor(model_dir, str(check_device(args.device)))
    if args.list_inputs:
        for f in predictor.card["inputs"]:
            print(f"{f['name']}\t{f['unit'] or '-'}\t{f.get('description', '')}")
        return 0
    if args.input or args.output:
        if not (args.input and args.output):
            raise DataError("batch prediction needs both --input FILE and --output FILE")
        if args.values:
            raise DataError("give either input values or --input/--output, not both")
        done, rejected = predict_table(predictor, args.input, args.output)
        print(json.dumps({"output": str(args.output), "predicted": done, "quarantined": rejected}))
        return 0
    if len(args.values) != len(predictor.inputs):
        raise DataError(f"expected {len(predictor.inputs)} values ({', '.join(predictor.inputs)}), got {len(args.values)}")
    values = []
    for name, text in zip(predictor.inputs, args.values):
        try:
            values.append(float(text))
        except ValueError:
            raise DataError(f"input {name}: expected a number, got {text!r}") from None
    print(json.dumps({predictor.output_name: predictor.predict_one(values)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
