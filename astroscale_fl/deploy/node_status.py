"""What a deployed node has done, kept in its data directory for operators and the node's metrics.

The ClientApp records every message it handles in ``<data-dir>/.astroscale/node-status.json``
(written atomically, mode 0600): rows held, rounds trained, the last round's training seconds,
ε spent and the budget that applies, declines with their reason, the message in progress, and
the timings of the last messages (seconds inside our handler and since the process started, which
includes Python start-up and imports when Flower starts a fresh process per message). The warm
runtime (:mod:`astroscale_fl.deploy.launcher`) serves this file as Prometheus metrics and
``GET /status``; ``astroscale-fl node status --data-dir DIR`` prints it. Plain SuperNodes get the
file too, so ``node status`` works without the warm runtime.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from astroscale_fl.atomic import write_text
from astroscale_fl.data.node_dirs import deployed_data_dir, node_state_dir
from astroscale_fl.errors import DataError

STATUS_FILE = "node-status.json"
KEEP_MESSAGES = 200  # timings of the last messages kept in the file


def status_path(data_dir: str | Path) -> Path:
    """``<data-dir>/.astroscale/node-status.json``."""
    return node_state_dir(data_dir) / STATUS_FILE


def _empty() -> dict[str, Any]:
    return {"rounds_trained": 0, "declines": 0, "messages": []}


def load_status(data_dir: str | Path) -> dict[str, Any]:
    """The node's status file, checked (an empty status when the node has not handled a message yet);
    an unreadable or malformed file is a one-line :class:`DataError` naming it."""
    path = status_path(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _empty()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the node status ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: not JSON ({exc})") from None
    return validate_status(doc, str(path))


def read_status(data_dir: str | Path) -> dict[str, Any]:
    """The node's status for the node itself: a malformed file counts as empty (it is rewritten whole)."""
    try:
        return load_status(data_dir)
    except DataError:
        return _empty()


_COUNTS = ("rows", "rounds_trained", "declines")
_NUMBERS = ("last_train_seconds", "epsilon", "epsilon_budget")
_LAUNCHER_COUNTS = ("pid", "clientapps_started", "clientapps_failed")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate_status(doc: Any, origin: str) -> dict[str, Any]:
    """``doc`` if it has the shape of a node status (the file, or a launcher's ``GET /status``), else a
    one-line :class:`DataError` naming ``origin``, the key and what was expected."""
    if not isinstance(doc, dict):
        raise DataError(f"{origin}: expected a JSON object (a node status), got {type(doc).__name__}")
    for key in _COUNTS:
        if doc.get(key) is not None and not _is_count(doc[key]):
            raise DataError(f"{origin}: {key!r} must be a whole number >= 0, got {doc[key]!r}")
    for key in _NUMBERS:
        value = doc.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"{origin}: {key!r} must be a number, got {value!r}")
    for key in ("last_decline", "data_dir"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise DataError(f"{origin}: {key!r} must be a string, got {doc[key]!r}")
    busy = doc.get("in_progress")
    if busy is not None and not (isinstance(busy, dict) and isinstance(busy.get("kind"), str)
                                 and _is_count(busy.get("round"))):
        raise DataError(f"{origin}: 'in_progress' must be an object with 'kind' (text) and 'round' (a whole "
                        f"number), got {busy!r}")
    launcher = doc.get("launcher")
    if launcher is not None and not (isinstance(launcher, dict) and all(_is_count(launcher.get(k)) for k in _LAUNCHER_COUNTS)):
        raise DataError(f"{origin}: 'launcher' must be an object with whole numbers {list(_LAUNCHER_COUNTS)}, got {launcher!r}")
    return doc


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, owner-only (file 0600 in a 0700 directory): it says what the node did."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        write_text(path, text)
    finally:
        os.umask(old)


def _write(data_dir: str | Path, status: dict[str, Any]) -> None:
    write_private(status_path(data_dir), json.dumps(status, indent=1, sort_keys=True))


def process_seconds() -> float | None:
    """Seconds since this process started (Linux), or None where /proc is missing."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of stat(5): start time after boot, in clock ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def recording(node_config: dict[str, Any], kind: str, server_round: int) -> Iterator[dict[str, Any]]:
    """Record one message in the node's status file (deployment only: needs ``data-dir``).

    The caller fills the yielded dict: ``rows``, ``epsilon``, ``epsilon_budget``, ``declined``
    (the reason). A message that raises is recorded as failed and the exception propagates.
    """
    outcome: dict[str, Any] = {}
    data_dir = deployed_data_dir(node_config)
    if not data_dir:
        yield outcome
        return
    status = read_status(data_dir)
    started = time.time()
    status["in_progress"] = {"kind": kind, "round": server_round, "since": started, "pid": os.getpid()}
    _write(data_dir, status)
    try:
        yield outcome
        failed = None
    except BaseException as exc:
        failed = f"{type(exc).__name__}: {exc}"[:300]
        raise
    finally:
        seconds = time.time() - started
        status.pop("in_progress", None)
        entry = {"kind": kind, "round": server_round, "at": started, "seconds": round(seconds, 4),
                 "process_seconds": process_seconds()}
        if failed:
            entry["failed"] = failed
        for key in ("rows", "epsilon", "epsilon_budget"):
            if key in outcome:
                status[key] = outcome[key]
        if outcome.get("declined"):
            status["declines"] = int(status.get("declines", 0)) + 1
            status["last_decline"] = outcome["declined"]
            entry["declined"] = True
        elif kind == "train" and not failed:
            status["rounds_trained"] = int(status.get("rounds_trained", 0)) + 1
            status["last_train_seconds"] = round(seconds, 4)
        status["messages"] = (status.get("messages", []) + [entry])[-KEEP_MESSAGES:]
        status["updated"] = time.time()
        _write(data_dir, status)
