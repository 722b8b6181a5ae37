"""DP statistics round (``privacy.statistics_epsilon``): the Gaussian mechanism on a node's statistics.

Without it, the statistics round releases exact per-node aggregates that no DP covers. With
``privacy.statistics_epsilon=ε`` each node releases, once per run, only what the configured
preprocessing consumes (:class:`StatisticsRelease`):

- per feature column, a histogram on fixed, data-independent bins plus one "missing" cell
  (medians and IQRs for imputation and robust scaling come from it);
- per column whose mean and standard deviation are used (the target; every feature under
  ``preprocess.scaling=standard``): the count, the sum of ``x − a`` and the sum of ``(x − a)²``
  of values clipped to the task's physical range ``[lo, hi]`` (``a`` its midpoint).

Sensitivity. Adding or removing one row changes each histogram by 1 in one cell, each count by
1, each shifted sum by at most ``h = (hi − lo) / 2`` and each shifted sum of squares by at most
``h²``. Each component is divided by that bound, so the whole release has L2 sensitivity
``L = sqrt(#histograms + 3 × #moment columns)``, and Gaussian noise of standard deviation
``σ L`` (in those units) is added: one Gaussian mechanism with noise multiplier ``σ``. Its RDP is
that of one step of the subsampled Gaussian with sample rate 1, so the node's ledger records
it as the Opacus history entry ``[σ, 1.0, 1]`` and composes it with its DP-SGD steps; σ is the
smallest that keeps this one release within ``ε`` at the node's δ.

Bins. ``BINS`` bins equally spaced in ``asinh((x − a0) / s)``, with ``a0`` the point of
``[lo, hi]`` nearest 0 and ``s = (hi − lo) / RESOLUTION``: fixed by the task's ranges alone (no
data), with a resolution of about 5% of ``|x − a0|`` far from ``a0`` and ``s`` near it, so that
ranges spanning orders of magnitude (proper motions up to 2e4 mas/yr, photometric errors of
0.001 mag) keep usable quantiles. The server sums the nodes' noisy histograms and reads
quantiles off the running maximum of the cumulative counts (post-processing).

The noise comes from OS randomness, never the run's seed. A repeated query in the same run
returns the kept release (no second spend).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from astroscale_fl.data.node_data import NodeData
from astroscale_fl.federation import protocol
from astroscale_fl.federation.protocol import Decline
from astroscale_fl.federation.records import numpy_to_arrays
from astroscale_fl.preprocessing import ColumnStatistics, sketch
from astroscale_fl.preprocessing.derived import DERIVED_RANGES
from astroscale_fl.privacy import node as dp_node
from astroscale_fl.privacy.calibrate import default_delta, noise_for_target_epsilon
from astroscale_fl.privacy.card import reply_record
from astroscale_fl.privacy.ledger import PrivacyError, commit_ledger, epsilon_of, open_ledger
from astroscale_fl.privacy.settings import dp_sgd_settings

BINS = 256
RESOLUTION = 1000.0
RELEASE_KEY = "dp-statistics-release"  # Context.state: this run's release, returned again on a repeat query


def statistics_epsilon(privacy_cfg: Mapping) -> float | None:
    """``privacy.statistics_epsilon`` (None: the statistics round is exact)."""
    value = privacy_cfg.get("statistics_epsilon")
    if value is None:
        return None
    if not (float(value) > 0 and math.isfinite(float(value))):
        raise PrivacyError(f"privacy.statistics_epsilon: expected a positive number or null, got {value}")
    return float(value)


def check_statistics_round(cfg, task, pipeline) -> float | None:
    """``privacy.statistics_epsilon`` of a run whose statistics round can run under it (epsilon
    positive, every released column with a physical range); None: the round is exact. One
    check for ``train``'s preflight (before the run directory exists) and the server."""
    epsilon = statistics_epsilon(cfg.privacy)
    if epsilon is not None:
        StatisticsRelease.for_pipeline(task, pipeline)  # ranges exist, or a one-line error
    return epsilon


def column_ranges(task, columns: list[str]) -> np.ndarray:
    """Physical ``[lo, hi]`` of each statistics column (raw inputs, derived features, target)."""
    known = {f.name: (f.low, f.high) for f in task.inputs} | dict(DERIVED_RANGES) | {task.target: task.target_range}
    out = np.array([known.get(c, (-np.inf, np.inf)) for c in columns], dtype=np.float64)
    unbounded = [c for c, (lo, hi) in zip(columns, out, strict=True) if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo)]
    if unbounded:
        raise PrivacyError(f"privacy.statistics_epsilon: column(s) {unbounded} of task {task.name} have no finite physical "
                           "range to clip to; use preprocess.reference (a public table) instead")
    return out


def bin_edges(lo: float, hi: float, bins: int = BINS) -> np.ndarray:
    """Fixed edges over ``[lo, hi]``, equally spaced in ``asinh((x − a0) / s)`` (module docstring)."""
    anchor = min(max(0.0, lo), hi)
    scale = (hi - lo) / RESOLUTION
    u = np.linspace(np.arcsinh((lo - anchor) / scale), np.arcsinh((hi - anchor) / scale), bins + 1)
    edges = anchor + scale * np.sinh(u)
    edges[0], edges[-1] = lo, hi
    return edges


@dataclass(frozen=True)
class StatisticsRelease:
    """What each node releases under DP for a given pipeline (public: fixed by the config)."""

    columns: list[str]
    ranges: np.ndarray  # columns x 2
    histogram: np.ndarray  # bool per column: histogram + missing cell released
    moments: np.ndarray  # bool per column: count, shifted sum, shifted sum of squares released
    bins: int = BINS

    @classmethod
    def for_pipeline(cls, task, pipeline) -> StatisticsRelease:
        """Histograms for the features (quantiles), moments where means and std are used."""
        columns = pipeline.statistics_columns
        is_target = np.array([c == pipeline.target.target for c in columns])
        standard = any(getattr(step, "method", None) == "standard" for step in pipeline.steps)
        return cls(columns, column_ranges(task, columns), ~is_target, is_target | standard)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the normalised release to one row added or removed."""
        return math.sqrt(int(self.histogram.sum()) + 3 * int(self.moments.sum()))

    def release(self, columns: Mapping[str, np.ndarray], noise_multiplier: float, rng: np.random.Generator) -> ColumnStatistics:
        """Noisy statistics of ``columns`` (values out of range are clipped, non-finite count as missing).

        Post-processing only after the noise: each noisy histogram cell, rounded, goes to the
        mergeable sketch's bin of the cell's midpoint (negative counts stay, so noise keeps zero
        mean when nodes' sketches add up); means and spreads come from the noisy moments where
        released, else from the noisy histogram.
        """
        std = noise_multiplier * self.sensitivity
        k = len(self.columns)
        count, missing, mean_, m2 = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
        counts = np.zeros((k, sketch.NUM_BINS), dtype=np.int64)
        for j, name in enumerate(self.columns):
            lo, hi = self.ranges[j]
            raw = np.asarray(columns[name], dtype=np.float64).reshape(-1)
            finite = np.isfinite(raw)
            x = np.clip(raw[finite], lo, hi)
            if self.histogram[j]:
                edges = bin_edges(lo, hi, self.bins)
                cells = np.bincount(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, self.bins - 1), minlength=self.bins)
                noisy = np.append(cells, (~finite).sum()) + rng.normal(0.0, std, self.bins + 1)
                mid = 0.5 * (edges[:-1] + edges[1:])
                counts[j] = np.rint(np.bincount(sketch.bin_index(mid), weights=noisy[:-1], minlength=sketch.NUM_BINS)).astype(np.int64)
                missing[j], count[j] = noisy[-1], noisy[:-1].sum()
                weights = np.clip(noisy[:-1], 0.0, None)
                if weights.sum() > 0:
                    mean_[j] = float((weights * mid).sum() / weights.sum())
                    m2[j] = float((weights * (mid - mean_[j]) ** 2).sum())
            if self.moments[j]:
                a, h = 0.5 * (lo + hi), 0.5 * (hi - lo)
                n = x.size + rng.normal(0.0, std)
                s = float((x - a).sum()) + rng.normal(0.0, std * h)
                q = float(((x - a) ** 2).sum()) + rng.normal(0.0, std * h * h)
                rows = max(n, 1.0)
                count[j], mean_[j], m2[j] = n, a + s / rows, max(q - s * s / rows, 0.0)
        return ColumnStatistics(list(self.columns), count, missing, mean_, m2, self.ranges[:, 0].copy(),
                                self.ranges[:, 1].copy(), counts)


def _node_ledger_settings(privacy_cfg: Mapping, n_rows: int) -> tuple[str, float, float | None]:
    """(accountant, δ, lifetime budget) of the node's ledger under the run's privacy option."""
    settings = dp_sgd_settings(privacy_cfg)
    if settings is None:
        return "rdp", default_delta(n_rows), None
    return settings.accountant, settings.delta_for(n_rows), settings.epsilon_budget


def private_statistics_reply(cfg, task, pipeline, train_frame, state, node: NodeData) -> RecordDict:
    """The node's DP statistics reply: spend in its ledger first (write-ahead), then release.

    Raises :class:`astroscale_fl.privacy.node.BudgetExceeded` if the release would take the node
    past ``privacy.epsilon_budget``.
    """
    epsilon = statistics_epsilon(cfg.privacy)
    release = StatisticsRelease.for_pipeline(task, pipeline)
    n_rows = len(train_frame)
    accountant, delta, budget = _node_ledger_settings(cfg.privacy, n_rows)
    if accountant == "gdp":
        raise PrivacyError("privacy.statistics_epsilon: the gdp accountant cannot compose the statistics release with DP-SGD steps; use rdp or prv")
    path = dp_node.ledger_path(node)
    ledger = open_ledger(accountant, delta, state=state, path=path)
    if RELEASE_KEY not in state:
        sigma = noise_for_target_epsilon(epsilon, delta, 1.0, 1, accountant)
        reason = ledger.budget_refusal(budget, sigma, 1.0, 1)
        if reason:
            raise dp_node.BudgetExceeded(Decline(node.name, f"the statistics round: {reason}", ledger.epsilon()))
        ledger.record(sigma, 1.0, 1)
        commit_ledger(ledger, state=state, path=path)
        stats = release.release(pipeline.statistics_frame(train_frame), sigma, np.random.default_rng())
        state[RELEASE_KEY] = numpy_to_arrays(stats.to_arrays())
    stats = ColumnStatistics.from_arrays(release.columns, {k: v.numpy() for k, v in state[RELEASE_KEY].items()})
    return RecordDict({
        protocol.STATS_KEY: numpy_to_arrays(stats.to_arrays()),
        protocol.COLUMNS_KEY: ConfigRecord({protocol.COLUMN_NAMES_KEY: list(stats.columns)}),
        protocol.METRICS_KEY: MetricRecord({protocol.WEIGHT_KEY: max(0, int(round(float(stats.count[-1]))))}),  # noisy count
        protocol.PRIVACY_KEY: reply_record(node.name, ledger),
    })


def card_section(entries: list[dict], epsilon: float) -> dict:
    """``privacy.preprocessing_statistics`` of the model card: ε and δ of this run's statistics release.

    ``entries`` are the nodes' ledger records sent with their statistics replies; the release is
    the last step of each (write-ahead), so each node's entry here is that one step ``[[σ, 1.0, 1]]``
    (recomputable with Opacus); ``epsilon`` / ``delta`` are the largest over the nodes.
    """
    nodes = []
    for e in entries:
        sigma, rate, _ = e["history"][-1]
        history = [[float(sigma), float(rate), 1]]
        nodes.append({"node": e["node"], "accountant": e["accountant"], "delta": float(e["delta"]),
                      "epsilon": epsilon_of(e["accountant"], history, float(e["delta"])), "history": history})
    return {
        "source": "nodes", "covered_by_dp": True, "mechanism": "gaussian",
        "epsilon": max((n["epsilon"] for n in nodes), default=float(epsilon)),
        "delta": max((n["delta"] for n in nodes), default=None),
        "target_epsilon": float(epsilon),
        "released": "per node: noisy histograms on fixed bins (features), noisy count, sum and sum of squares "
                    "of range-clipped values (target; features under standard scaling)",
        "nodes": nodes,
    }
