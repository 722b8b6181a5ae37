"""A node's Prometheus metrics and ``GET /status``, served by the warm launcher on 127.0.0.1.

Everything is read at request time from the node's status file (written by the ClientApp,
:mod:`astroscale_fl.deploy.node_status`) plus the launcher's own counters, so the numbers are
those of the messages the node really handled. Metrics (prefix ``astroscale_node_``): rows held,
rounds trained, the last round's training seconds, ε spent and the ε budget that applies
(NaN when unlimited), declines, ClientApp processes started / failed / running.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from astroscale_fl.deploy.launcher import LauncherStats
from astroscale_fl.deploy.node_status import read_status

PREFIX = "astroscale_node_"


def node_status(data_dir: str | Path, stats: LauncherStats) -> dict[str, Any]:
    """The ``GET /status`` document: the node's status file plus the launcher's counters."""
    status = read_status(data_dir)
    status["data_dir"] = str(Path(data_dir).resolve())
    status["launcher"] = {"pid": stats.pid, "uptime_seconds": round(time.time() - stats.started_at, 1),
                          "clientapps_started": stats.clientapps_started, "clientapps_failed": stats.clientapps_failed,
                          "clientapps_running": len(stats.running), "warm_import_seconds": round(stats.warm_import_seconds, 3)}
    return status


class _Collector:
    def __init__(self, data_dir: str | Path, stats: LauncherStats) -> None:
        self.data_dir, self.stats = data_dir, stats

    def collect(self):
        s = node_status(self.data_dir, self.stats)
        number = lambda key: float(s[key]) if isinstance(s.get(key), (int, float)) else math.nan  # noqa: E731
        yield GaugeMetricFamily(PREFIX + "rows", "Training rows this node holds", value=number("rows"))
        yield CounterMetricFamily(PREFIX + "rounds_trained", "Training rounds this node completed",
                                  value=float(s.get("rounds_trained", 0)))
        yield GaugeMetricFamily(PREFIX + "last_train_seconds", "Seconds the last training message took on this node",
                                value=number("last_train_seconds"))
        yield GaugeMetricFamily(PREFIX + "epsilon_spent", "Lifetime epsilon this node has spent (DP runs)",
                                value=number("epsilon"))
        yield GaugeMetricFamily(PREFIX + "epsilon_budget", "Lifetime epsilon budget that applies (NaN: unlimited)",
                                value=number("epsilon_budget"))
        yield CounterMetricFamily(PREFIX + "declines", "Training rounds this node declined (budget or privacy floor)",
                                  value=float(s.get("declines", 0)))
        launcher = s["launcher"]
        yield CounterMetricFamily(PREFIX + "clientapps_started", "ClientApp processes forked by the warm launcher",
                                  value=float(launcher["clientapps_started"]))
        yield CounterMetricFamily(PREFIX + "clientapps_failed", "ClientApp processes that exited with an error",
                                  value=float(launcher["clientapps_failed"]))
        yield GaugeMetricFamily(PREFIX + "clientapps_running", "ClientApp processes running now",
                                value=float(launcher["clientapps_running"]))


def serve(data_dir: str | Path, stats: LauncherStats, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/status`` on ``host:port`` in a daemon thread; returns the server."""
    registry = CollectorRegistry()
    registry.register(_Collector(data_dir, stats))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, kind = generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"
            elif path == "/status":
                body, kind = json.dumps(node_status(data_dir, stats), indent=1).encode(), "application/json"
            else:
                self.send_error(404, "try /metrics or /status")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not worth a log line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="node-metrics", daemon=True).start()
    return server
