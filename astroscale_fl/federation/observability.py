"""Prometheus metrics of the ServerApp, served over HTTP (``federation.metrics_port``, default 9090).

Names follow Prometheus conventions: prefix ``astroscale_fl_``, units in the name, counters end
in ``_total``. Scrape ``http://<server>:<port>/metrics``.

=============================================  =========  =========================================
metric                                         type       meaning
=============================================  =========  =========================================
astroscale_fl_rounds_completed_total           counter    training rounds completed (resumed rounds included)
astroscale_fl_current_round                    gauge      round in progress (or last completed)
astroscale_fl_round_duration_seconds           histogram  wall time of each round
astroscale_fl_last_round_duration_seconds      gauge      wall time of the last round
astroscale_fl_nodes_sampled_total              counter    training messages sent
astroscale_fl_nodes_replied_total              counter    replies accepted for aggregation
astroscale_fl_nodes_failed_total               counter    replies that were errors or never came (timeout)
astroscale_fl_nodes_declined_total             counter    nodes that declined a round (DP: privacy budget spent)
astroscale_fl_replies_rejected_total           counter    replies rejected: non-finite values or update norm too large
astroscale_fl_train_loss                       gauge      example-weighted training loss of the last round
astroscale_fl_eval_loss / _eval_r2             gauge      federated evaluation on the nodes' validation rows
astroscale_fl_test_rmse / _test_r2             gauge      centralised evaluation on the held-out test split
astroscale_fl_download_bytes_total             counter    array payload sent to nodes (down)
astroscale_fl_upload_bytes_total               counter    array payload received from nodes (up)
astroscale_fl_privacy_epsilon_max              gauge      largest ε any node reported (NaN without DP)
astroscale_fl_run_info                         gauge      1, labelled with strategy, task and model
=============================================  =========  =========================================

One HTTP server per process: a second run in the same process (a Hydra multirun) reuses it and
swaps in its own registry. A port that is taken is logged and skipped: metrics never stop a run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from logging import WARNING
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "astroscale_fl"
_ROUND_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, float("inf"))


class RunMetrics:
    """The metrics of one run, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds_completed = Counter(f"{PREFIX}_rounds_completed", "Training rounds completed", registry=r)
        self.current_round = Gauge(f"{PREFIX}_current_round", "Round in progress (or last completed)", registry=r)
        self.round_duration = Histogram(f"{PREFIX}_round_duration_seconds", "Wall time of a round", buckets=_ROUND_BUCKETS, registry=r)
        self.last_round_duration = Gauge(f"{PREFIX}_last_round_duration_seconds", "Wall time of the last round", registry=r)
        self.nodes_sampled = Counter(f"{PREFIX}_nodes_sampled", "Training messages sent to nodes", registry=r)
        self.nodes_replied = Counter(f"{PREFIX}_nodes_replied", "Training replies accepted for aggregation", registry=r)
        self.nodes_failed = Counter(f"{PREFIX}_nodes_failed", "Training replies that were errors or timed out", registry=r)
        self.nodes_declined = Counter(f"{PREFIX}_nodes_declined", "Nodes that declined a training round (privacy budget spent)",
                                      registry=r)
        self.replies_rejected = Counter(f"{PREFIX}_replies_rejected", "Training replies rejected (non-finite or update norm too large)",
                                        registry=r)
        self.train_loss = Gauge(f"{PREFIX}_train_loss", "Example-weighted local training loss of the last round", registry=r)
        self.eval_loss = Gauge(f"{PREFIX}_eval_loss", "Federated evaluation loss (nodes' validation rows)", registry=r)
        self.eval_r2 = Gauge(f"{PREFIX}_eval_r2", "Federated evaluation R² (nodes' validation rows)", registry=r)
        self.test_rmse = Gauge(f"{PREFIX}_test_rmse", "Centralised test RMSE, in the target's unit", registry=r)
        self.test_r2 = Gauge(f"{PREFIX}_test_r2", "Centralised test R²", registry=r)
        self.bytes_down = Counter(f"{PREFIX}_download_bytes", "Array payload sent to nodes", registry=r)
        self.bytes_up = Counter(f"{PREFIX}_upload_bytes", "Array payload received from nodes", registry=r)
        self.epsilon_max = Gauge(f"{PREFIX}_privacy_epsilon_max", "Largest privacy budget ε reported by any node", registry=r)
        self.info = Gauge(f"{PREFIX}_run_info", "Run description", ["strategy", "task", "model"], registry=r)
        for gauge in (self.train_loss, self.eval_loss, self.eval_r2, self.test_rmse, self.test_r2, self.epsilon_max):
            gauge.set(math.nan)

    def describe(self, strategy: str, task: str, model: str) -> None:
        self.info.labels(strategy=strategy, task=task, model=model).set(1)

    def round_started(self, server_round: int) -> None:
        self.current_round.set(server_round)

    def round_finished(self, row: Any, declined: int = 0, rejected: int = 0, epsilon: float | None = None) -> None:
        """Record a completed round (a :class:`~astroscale_fl.federation.history.RoundRecord`)."""
        self.current_round.set(row.round)
        self.rounds_completed.inc()
        if math.isfinite(row.wall_seconds):
            self.round_duration.observe(row.wall_seconds)
            self.last_round_duration.set(row.wall_seconds)
        self.nodes_sampled.inc(row.nodes_sampled)
        self.nodes_replied.inc(row.nodes_replied)
        self.nodes_failed.inc(row.nodes_failed)
        self.nodes_declined.inc(declined)
        self.replies_rejected.inc(rejected)
        self.bytes_down.inc(row.bytes_down)
        self.bytes_up.inc(row.bytes_up)
        for gauge, value in ((self.train_loss, row.train_loss), (self.eval_loss, row.eval_loss), (self.eval_r2, row.eval_r2),
                             (self.test_rmse, row.test_rmse), (self.test_r2, row.test_r2)):
            gauge.set(value)
        if epsilon is not None and math.isfinite(epsilon):
            current = self.epsilon_max._value.get()  # noqa: SLF001 (prometheus_client has no public getter)
            self.epsilon_max.set(epsilon if math.isnan(current) else max(current, epsilon))

    def restore(self, rows: list[Any], rejected: Mapping[int, int] | None = None) -> None:
        """After a resume: count the checkpointed rounds (``rejected``: replies rejected per
        round, which history.csv does not hold) so the counters reflect the whole run."""
        for row in rows:
            self.round_finished(row, declined=row.nodes_declined, rejected=(rejected or {}).get(row.round, 0))


class _Delegating:
    """A collector that serves whichever run's registry is current."""

    def __init__(self) -> None:
        self.current: CollectorRegistry | None = None

    def collect(self):
        return self.current.collect() if self.current is not None else []


_LOCK = threading.Lock()
_SERVERS: dict[tuple[str, int], _Delegating] = {}


def serve(metrics: RunMetrics, port: int, host: str = "0.0.0.0") -> bool:
    """Serve ``metrics`` on ``host:port`` (0 = off); return whether they are served."""
    if port <= 0:
        return False
    from flwr.common import log
    from prometheus_client import start_http_server

    with _LOCK:
        key = (host, int(port))
        if key not in _SERVERS:
            delegate = _Delegating()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(delegate)
            try:
                start_http_server(int(port), addr=host, registry=registry)
            except OSError as exc:
                log(WARNING, "metrics: cannot serve on %s:%d (%s); continuing without /metrics", host, port, exc)
                return False
            _SERVERS[key] = delegate
        _SERVERS[key].current = metrics.registry
    return True
