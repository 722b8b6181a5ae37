"""Validation + prediction for one loaded model, without HTTP (the handlers and the benchmark call it)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from astroscale_fl.errors import DataError, one_line
from astroscale_fl.serve.schema import InputSchema, Invalid, _error, parse_json

DEFAULT_MAX_BATCH = 10_000


class Service:
    """Validation + prediction for one loaded :class:`~astroscale_fl.export.predict.Predictor`.

    The request handlers are thin wrappers around :meth:`predict_single_body` and
    :meth:`predict_batch_body`, which the benchmark also times in process. The constructor
    predicts probe stars (the middle of every valid range, and the card's worked example) and
    refuses a model that fails or answers with a non-finite number: better not to start than
    to answer 500 to every request.
    """

    def __init__(self, predictor, max_batch: int = DEFAULT_MAX_BATCH):
        self.predictor = predictor
        self.schema = InputSchema(predictor.card["inputs"])
        if self.schema.names != list(predictor.inputs):
            raise DataError(f"{predictor.model_dir}: model card inputs {self.schema.names} differ from the pipeline's {predictor.inputs}")
        self.output_name = predictor.output_name
        self.max_batch = int(max_batch)
        self.columns_as_mapping = self._mapping_is_exact()

    def _frame_input(self, columns: dict[str, np.ndarray]):
        if self.columns_as_mapping:
            return columns
        import pandas as pd

        return pd.DataFrame(columns, copy=False)

    def _probe(self) -> dict[str, np.ndarray]:
        """Probe stars: mid-range values, and the card's example when it is valid."""
        mid = [(lo + hi) / 2 if math.isfinite(lo + hi) else (lo if math.isfinite(lo) else (hi if math.isfinite(hi) else 0.0))
               for lo, hi in (self.schema.ranges[n] for n in self.schema.names)]
        rows = [mid, mid]
        example = self.predictor.card.get("example")
        example = example.get("inputs") if isinstance(example, dict) else None
        if isinstance(example, list) and len(example) == len(self.schema.names):
            try:
                rows.append(self.schema.row(dict(zip(self.schema.names, example))))
            except Invalid:
                pass
        return {n: np.array([r[j] for r in rows], dtype=np.float64) for j, n in enumerate(self.schema.names)}

    def _mapping_is_exact(self) -> bool:
        """Whether ``predict_frame`` takes ``{column: array}`` and agrees with a DataFrame exactly.

        Columns skip building a DataFrame (the bulk of one star's time) once the pipeline
        accepts a mapping; until then, or if answers would differ, a DataFrame is used.
        """
        import pandas as pd

        probe = self._probe()
        try:
            expected = np.asarray(self.predictor.predict_frame(pd.DataFrame(probe)), dtype=np.float64)
        except Exception as exc:  # refuse to start rather than answer 500 to every request
            raise DataError(f"{self.predictor.model_dir}: the model cannot predict "
                            f"({type(exc).__name__}: {one_line(str(exc))})") from None
        if not np.isfinite(expected).all():
            raise DataError(f"{self.predictor.model_dir}: the model predicts {expected.tolist()} for probe stars "
                            f"(mid-range inputs and the card's example); refusing to serve non-finite predictions")
        try:
            got = self.predictor.predict_frame(probe)
        except Exception:  # the pipeline needs a DataFrame
            return False
        return bool(np.array_equal(np.asarray(got), expected, equal_nan=True))

    def predict_columns(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Predictions for validated float64 columns (card order)."""
        import torch

        with torch.inference_mode():
            return np.asarray(self.predictor.predict_frame(self._frame_input(columns)), dtype=np.float64)

    def predict_rows(self, rows: list[list[float]]) -> np.ndarray:
        """Predictions for validated rows of values in card order (micro-batches)."""
        matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(self.schema.names))
        return self.predict_columns({n: np.ascontiguousarray(matrix[:, j]) for j, n in enumerate(self.schema.names)})

    def predict_values(self, values: list[float]) -> float:
        """One star: validated values in card order -> prediction."""
        return float(self.predict_columns({n: np.array([v], dtype=np.float64) for n, v in zip(self.schema.names, values)})[0])

    def encode(self, value: float | list[float]) -> bytes:
        """The JSON answer ``{"predicted_<target>": value}``; a non-finite prediction is a 500, never ``NaN``."""
        try:
            return json.dumps({self.output_name: value}, allow_nan=False).encode()
        except ValueError:
            raise Invalid(500, "the model produced a non-finite prediction") from None

    def parse_single(self, body: bytes) -> list[float]:
        """A ``/predict`` body -> validated values in card order; raises :class:`Invalid`."""
        obj = parse_json(body)
        if type(obj) is list:
            raise Invalid(422, [_error([], "Input should be an object; send a list to /predict/batch", "model_attributes_type")])
        return self.schema.row(obj)

    def parse_batch(self, body: bytes) -> dict[str, np.ndarray]:
        """A ``/predict/batch`` body -> validated float64 columns; raises :class:`Invalid`."""
        return self.schema.columns(parse_json(body), self.max_batch)

    def predict_single_body(self, body: bytes) -> bytes:
        """The whole single-star path without HTTP: body -> answer; raises :class:`Invalid`."""
        return self.encode(self.predict_values(self.parse_single(body)))

    def predict_batch_body(self, body: bytes) -> bytes:
        """The whole batch path without HTTP: body -> answer; raises :class:`Invalid`."""
        return self.encode(self.predict_columns(self.parse_batch(body)).tolist())

    def health(self) -> dict[str, Any]:
        """``/healthz``: what the model predicts from what. No filesystem paths: ``model`` names it by
        its task, its version (when it was exported) and the SHA-256 of its weights (from the card),
        the same for ``models/<task>/latest`` as for the directory it was published from."""
        card = self.predictor.card

        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        weights = (card.get("files") or {}).get("weights.pt") or {}
        sha256 = weights.get("sha256") if isinstance(weights, dict) else None
        return {
            "status": "ok",
            "model": {"task": card.get("task"), "version": card.get("created"), "weights_sha256": sha256},
            "weights_sha256": sha256,
            "task": card.get("task"),
            "created": card.get("created"),
            "output": self.output_name,
            "target": card.get("target"),
            "inputs": [{"name": f["name"], "unit": f.get("unit"),
                        "valid_range": [finite(v) for v in self.schema.ranges[f["name"]]]} for f in card["inputs"]],
        }
