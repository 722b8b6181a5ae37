"""Which round's model a run exports, and when it stops: model selection and early stopping.

``federation.select``: ``best`` (default) exports the global model of the round whose pooled
node-validation score (``federation.select_metric``: a validation column of ``history.csv``,
``eval_r2`` by default) is best; ``last`` exports the last round's model, as before. The test
split never takes part. ``federation.patience``: ``null`` runs every round; ``K`` stops once the
validation score has not beaten its best by more than ``federation.min_delta`` for K rounds
(``federation.num_rounds`` is then the maximum). Centralized runs apply the same to epochs,
scored on a validation share of the training rows.

Both are deterministic: ties keep the earlier round. A round without a validation score (no node
evaluated, e.g. ``fraction_evaluate=0``) neither improves nor uses up patience: a run without
federated evaluation runs every round and exports the last.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from astroscale_fl.config import require
from astroscale_fl.federation.history import RoundRecord

SELECTS = ("best", "last")
#: validation columns of history.csv a run can be selected by, and whether higher is better
SELECT_METRICS = {"eval_r2": True, "eval_loss": False, "eval_rmse": False}


@dataclass(frozen=True)
class SelectionSettings:
    """``federation.select``, ``select_metric``, ``patience`` and ``min_delta``, checked."""

    select: str = "best"
    metric: str = "eval_r2"
    patience: int | None = None
    min_delta: float = 0.0

    @classmethod
    def from_config(cls, fed) -> SelectionSettings:
        """The settings of a ``federation`` section; a one-line ConfigError names a bad key."""
        require(fed.select in SELECTS, "federation.select", "best or last", fed.select)
        require(fed.select_metric in SELECT_METRICS, "federation.select_metric",
                f"a validation metric, one of {sorted(SELECT_METRICS)} (never a test metric)", fed.select_metric)
        require(fed.patience is None or (not isinstance(fed.patience, bool) and fed.patience >= 1), "federation.patience",
                "null or an integer >= 1 (rounds without improvement before stopping)", fed.patience)
        require(math.isfinite(fed.min_delta) and fed.min_delta >= 0, "federation.min_delta", "a number >= 0", fed.min_delta)
        return cls(str(fed.select), str(fed.select_metric), None if fed.patience is None else int(fed.patience),
                   float(fed.min_delta))

    @property
    def higher_is_better(self) -> bool:
        return SELECT_METRICS[self.metric]


class ModelSelector:
    """Follows a run's validation score round by round: the best round and its model, and
    whether the run should stop (patience exhausted)."""

    def __init__(self, settings: SelectionSettings):
        self.settings = settings
        self.best_round: int | None = None
        self.best_score = math.nan
        self.best_model: OrderedDict[str, np.ndarray] = OrderedDict()
        self.reference = math.nan  # the score patience measures improvement against (beaten by > min_delta)
        self.since_improved = 0
        self.last_round = 0

    def _better(self, score: float, than: float, margin: float) -> bool:
        if not math.isfinite(score):
            return False
        if not math.isfinite(than):
            return True
        return score > than + margin if self.settings.higher_is_better else score < than - margin

    def observe(self, server_round: int, score: float, model: OrderedDict[str, np.ndarray]) -> bool:
        """Record a completed round's validation ``score`` and its global ``model``; True when it
        is the best so far (its model is kept, copied, for ``select=best``)."""
        self.last_round = server_round
        if not math.isfinite(score):
            return False
        if self._better(score, self.reference, self.settings.min_delta):
            self.reference, self.since_improved = score, 0
        else:
            self.since_improved += 1
        if not self._better(score, self.best_score, 0.0):
            return False
        self.best_round, self.best_score = server_round, float(score)
        if self.settings.select == "best":
            self.best_model = OrderedDict((k, np.array(v, copy=True)) for k, v in model.items())
        return True

    def should_stop(self) -> bool:
        """True once ``patience`` rounds in a row did not improve the score by more than ``min_delta``."""
        return self.settings.patience is not None and self.since_improved >= self.settings.patience

    def stop_reason(self) -> str:
        s = self.settings
        return f"stopped early: no {s.metric} gain > {s.min_delta:g} in {s.patience} rounds"

    def chosen_round(self) -> int:
        """The round whose model is exported: the best (when any round had a score) or the last."""
        return self.best_round if self.settings.select == "best" and self.best_round is not None else self.last_round

    def chosen_model(self, last: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """The exported model's arrays, given the last round's."""
        return self.best_model if self.chosen_round() != self.last_round and self.best_model else last

    def summary(self) -> dict[str, Any]:
        """metrics.json's ``selection``: the settings and the best round with its validation score."""
        s = self.settings
        return {"select": s.select, "metric": s.metric, "patience": s.patience, "min_delta": s.min_delta,
                "best_round": self.best_round, "best_score": None if self.best_round is None else self.best_score}

    def state_dict(self) -> dict[str, Any]:
        """The selector's scalars (JSON) for a checkpoint; ``best_model`` is saved as arrays."""
        return {"best_round": self.best_round, "best_score": self.best_score, "reference": self.reference,
                "since_improved": self.since_improved, "last_round": self.last_round}

    def load_state_dict(self, state: dict[str, Any], best_model: OrderedDict[str, np.ndarray]) -> None:
        """Continue from :meth:`state_dict` and the checkpoint's best model (resume)."""
        self.best_round = state.get("best_round")
        self.best_score = float(state.get("best_score", math.nan))
        self.reference = float(state.get("reference", math.nan))
        self.since_improved = int(state.get("since_improved", 0))
        self.last_round = int(state.get("last_round", 0))
        self.best_model = OrderedDict(best_model)


def selection_metrics(selector: ModelSelector, history: list[RoundRecord], num_rounds: int) -> dict[str, Any]:
    """metrics.json's model selection entries: the exported (selected) round and its validation
    score, the last round's test scores beside the selected one's, and where the run stopped early."""
    stopped_early = selector.should_stop() and selector.last_round < num_rounds
    chosen = selector.chosen_round()
    last = history[-1] if history else RoundRecord(round=0)
    score = next((getattr(r, selector.settings.metric) for r in history if r.round == chosen), math.nan)
    return {
        "selected_round": chosen,
        "selected_val_score": float(score) if math.isfinite(score) else None,
        "last_round_test_r2": last.test_r2,
        "last_round_test_rmse": last.test_rmse,
        "stopped_early_at": selector.last_round if stopped_early else None,
        "selection": selector.summary(),
    }
