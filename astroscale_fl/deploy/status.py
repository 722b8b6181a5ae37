"""``astroscale-fl status``: what a SuperLink knows (runs and SuperNodes), as readable tables.

It asks the SuperLink through the ``flwr`` CLI (``flwr ls`` and ``flwr supernode ls`` with
``--format json``), over the same TLS connection an operator uses for ``flwr run``: either a
named connection in ``$FLWR_HOME/config.toml`` or ``--superlink HOST:PORT`` with the CA that
signed its certificate (a temporary FLWR_HOME is written for the query).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astroscale_fl.errors import AstroScaleError

CONNECTION = "astroscale"


class StatusError(AstroScaleError):
    """The SuperLink could not be queried."""


@dataclass
class Connection:
    """How to reach a SuperLink's Control API."""

    name: str | None = None  # a connection already in $FLWR_HOME/config.toml
    address: str | None = None  # host:port
    root_certificates: str | None = None
    insecure: bool = False


def write_flwr_home(home: str | Path, address: str, root_certificates: str | None, insecure: bool = False,
                    name: str = CONNECTION) -> Path:
    """Write ``home/config.toml`` with one connection ``name`` (what ``flwr`` commands read)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    lines = [f"[superlink.{name}]", f'address = "{address}"']
    if insecure:
        lines.append("insecure = true")
    elif root_certificates:
        lines.append(f'root-certificates = "{Path(root_certificates).resolve()}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home / "config.toml"


def _flwr() -> str:
    exe = shutil.which("flwr")
    if exe is None:
        candidate = Path(sys.executable).with_name("flwr")
        if candidate.is_file():
            return str(candidate)
        raise StatusError("the `flwr` command was not found on PATH (activate the environment astroscale-fl is installed in)")
    return exe


def _query(args: list[str], conn: Connection, timeout: float) -> Any:
    env = dict(os.environ)
    tmp = None
    name = conn.name
    if conn.address:
        tmp = tempfile.mkdtemp(prefix="astroscale-status-")
        write_flwr_home(tmp, conn.address, conn.root_certificates, conn.insecure)
        env["FLWR_HOME"] = tmp
        name = CONNECTION
    bin_dir = str(Path(_flwr()).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    try:
        out = subprocess.run([_flwr(), *args, *([name] if name else []), "--format", "json"], capture_output=True,
                             text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise StatusError(f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s") from None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    text = out.stdout.strip()
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if data is None or out.returncode != 0 or data.get("success") is False:
        detail = (data or {}).get("error-message") or (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StatusError(f"`flwr {' '.join(args)}` failed: {detail if isinstance(detail, str) else detail[0]}")
    return data


def flwr_home() -> Path:
    """Where the ``flwr`` CLI keeps its ``config.toml`` (``$FLWR_HOME``, else ``~/.flwr``)."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def check_connection(conn: Connection) -> None:
    """Refuse a named (or default) connection that ``$FLWR_HOME/config.toml`` lacks: asked for one,
    ``flwr`` writes its default configuration there (and may start a local SuperLink)."""
    if conn.address:
        return
    path = flwr_home() / "config.toml"
    hint = "give --superlink HOST:PORT --root-certificates CA.crt, or add the connection with `flwr`"
    try:
        superlinks = tomllib.loads(path.read_text()).get("superlink", {})
    except FileNotFoundError:
        raise StatusError(f"no Flower configuration at {path}; {hint}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StatusError(f"{path}: cannot read the Flower configuration ({exc})") from None
    names = sorted(k for k, v in superlinks.items() if isinstance(v, dict)) if isinstance(superlinks, dict) else []
    name = conn.name or (superlinks.get("default") if isinstance(superlinks, dict) else None)
    if not name or name not in names:
        raise StatusError(f"--connection {conn.name or '(default)'}: no [superlink.{name or '<name>'}] in {path} "
                          f"(it has {names or 'none'}); {hint}")


def query(conn: Connection, timeout: float = 30.0) -> dict[str, Any]:
    """``{"runs": [...], "nodes": [...]}`` as the SuperLink reports them."""
    if not (math.isfinite(timeout) and timeout > 0):
        raise StatusError(f"--timeout: expected a number of seconds > 0, got {timeout}")
    check_connection(conn)
    runs = _query(["ls"], conn, timeout)
    nodes = _query(["supernode", "ls"], conn, timeout)
    return {"runs": runs.get("runs", []), "nodes": nodes.get("nodes", [])}


def _get(row: dict[str, Any], *keys: str) -> str:
    for key in keys:
        if key in row and row[key] not in (None, ""):
            return str(row[key])
    return ""


def render(status: dict[str, Any]) -> None:
    """Print the runs and nodes tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    runs = Table(title=f"Runs ({len(status['runs'])})")
    for col in ("run id", "app", "status", "elapsed", "started", "finished", "traffic"):
        runs.add_column(col)
    for r in status["runs"]:
        app = _get(r, "fab-id", "app")
        if r.get("fab-version"):
            app += f"=={r['fab-version']}"
        traffic = (r.get("network-traffic") or {}).get("total-bytes")
        runs.add_row(_get(r, "run-id", "run_id"), app, _get(r, "status"), _get(r, "elapsed"),
                     _get(r, "running-at", "starting-at", "pending-at"), _get(r, "finished-at"),
                     _bytes(traffic) if isinstance(traffic, (int, float)) else "")
    nodes = Table(title=f"SuperNodes ({len(status['nodes'])})")
    for col in ("node id", "status", "owner", "online for", "online at", "offline at"):
        nodes.add_column(col)
    for n in status["nodes"]:
        state = _get(n, "status")
        style = {"online": "green", "offline": "red"}.get(state, "")
        elapsed = n.get("online-elapsed")
        nodes.add_row(_get(n, "node-id", "node_id"), f"[{style}]{state}[/]" if style else state, _get(n, "owner-name", "owner"),
                      f"{float(elapsed):.0f} s" if isinstance(elapsed, (int, float)) else "",
                      _get(n, "online-at"), _get(n, "offline-at"))
    console.print(runs)
    console.print(nodes)


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
