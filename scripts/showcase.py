#!/usr/bin/env python
"""Show an exported model on the held-out test stars its card carries, beside its test RMSE.

``python scripts/showcase.py [MODEL_DIR]`` (default ``models/hipparcos_absmag/latest``) predicts the
card's ``examples`` (the test stars nearest the 10/30/50/70/90 % quantiles of the true target) with
the same code as ``astroscale-fl predict``, prints them as a table with the error of each, the model's
test RMSE over the whole test split, and the ``scripts/predict.py`` command for the median star.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from astroscale_fl.data.tasks import display_unit
from astroscale_fl.errors import DataError, report_user_errors
from astroscale_fl.export.predict import Predictor

DEFAULT_MODEL = "models/hipparcos_absmag/latest"


def showcase(model_dir: str | Path) -> list[str]:
    """The showcase's lines for the exported model in ``model_dir``."""
    predictor = Predictor(model_dir)
    card = predictor.card
    examples = card.get("examples") or ([card["example"]] if card.get("example") else [])
    if not examples:
        raise DataError(f"{model_dir}: its model card has no worked examples (export it again with this version)")
    target = card["target"]["name"]
    unit, factor = display_unit(card["task"])
    shown = f" {unit}" if unit else ""
    rows = [(e["id"], e["target"], predictor.predict_one(e["inputs"])) for e in examples]
    width = max(4, *(len(str(i)) for i, _, _ in rows))
    lines = [f"{'id':>{width}}  {'true ' + target:>12}  {'predicted':>10}  {'error':>9}"]
    lines += [f"{i:>{width}}  {t * factor:>12.4g}  {p * factor:>10.4g}  {(p - t) * factor:>+9.3g}" for i, t, p in rows]
    rmse = card["metrics"]["test_rmse"] * factor
    lines.append(f"test RMSE over all {card['metrics'].get('test_rows', '?')} test stars: {rmse:.4g}{shown}; "
                 f"these {len(rows)} stars sit at the 10/30/50/70/90 % quantiles of the true {target}")
    median = examples[len(examples) // 2]
    lines.append("predict one yourself: python scripts/predict.py --model " + shlex.join(
        [str(model_dir), *(repr(v) for v in median["inputs"])]))
    return lines


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """Print the showcase of ``argv[0]`` (default :data:`DEFAULT_MODEL`)."""
    argv = sys.argv[1:] if argv is None else argv
    print("\n".join(showcase(argv[0] if argv else DEFAULT_MODEL)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
