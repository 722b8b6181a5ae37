"""The warm launcher's copy of the app it runs: the FAB installed once and its ClientApp imported once.

``flwr-clientapp`` (Flower's ``run_clientapp``) installs the run's FAB (app package) on every
message, hashing and unzipping it (~190 files) even when that FAB is already installed, and then
imports the ClientApp module and everything it imports (our ~50 modules: 0.2-0.5 s on 2 cores,
more without cached bytecode). A launcher child would pay both on every message.

So, per FAB hash:

1. the first child installs and loads the app with Flower's own functions, and tells the launcher
   (one line on a pipe) which FAB it loaded, after the SuperNode verified it
   (``--trusted-entities``) and the app loaded without error;
2. the launcher then imports that same ClientApp from the same installed directory, with Flower's
   loader, between messages;
3. later children, forked from the launcher, find the app already imported: when the message's FAB
   has the same SHA-256 they skip the re-install and the import; any other FAB (another run, new
   code) drops the launcher's copy in that child and goes Flower's way (and the launcher loads the
   new one next);
4. modules a message imported lazily (inside functions: pyarrow.dataset for the data, the app's
   own tensor-file reader, ...) are reported when the child exits, and the launcher imports them
   once too (the app's own only while it holds that FAB).

Nothing else is kept: every child still starts from the launcher's state, so nothing a message
does (module caches, RNG, opened files) reaches the next one; ``Context.state`` stays in the
SuperNode.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

APP_PACKAGES = ("astroscale_fl", "clients", "strategies", "server")  # the app's own top-level packages


@dataclass(frozen=True)
class WarmApp:
    """A ClientApp imported in the launcher from an installed FAB."""

    fab_hash: str
    project_dir: Path
    client_app: Any
    load_seconds: float


def drop_app_modules(project_dir: Path | None = None) -> None:
    """Forget the app's modules (and ``project_dir`` on ``sys.path``) so the next import loads another copy."""
    for name in [m for m in sys.modules if m.split(".")[0] in APP_PACKAGES]:
        del sys.modules[name]
    if project_dir is not None:
        while str(project_dir) in sys.path:
            sys.path.remove(str(project_dir))


class AppCache:
    """Held by the launcher; each child reports the FAB it loaded, the launcher imports it once."""

    def __init__(self) -> None:
        self.warm: WarmApp | None = None
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        for fd in (self._read, self._write):
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self._pending = b""
        self._imported: set[str] = set()  # lazily imported modules already tried here
        self._child_fab: str | None = None  # in a child: the FAB whose app it ran
        self._child_modules: set[str] = set()  # in a child: the modules there at the fork

    # -- launcher side ---------------------------------------------------------------------

    def load_reported(self) -> None:
        """Import the app the children last reported, if it is not the one already held."""
        try:
            self._pending += os.read(self._read, 65536)
        except BlockingIOError:
            return
        *lines, self._pending = self._pending.split(b"\n")
        for report in (json.loads(line) for line in lines if line.strip()):
            if "modules" in report:
                self.import_lazy(report["modules"], report["fab_hash"])
            elif self.warm is None or report["fab_hash"] != self.warm.fab_hash:
                self.load(**report)

    def import_lazy(self, names: list[str], fab_hash: str | None) -> None:
        """Import here the modules a child imported while it handled a message (each tried once)."""
        same_app = self.warm is not None and fab_hash == self.warm.fab_hash
        for name in names:
            if name in self._imported or (name.split(".")[0] in APP_PACKAGES and not same_app):
                continue
            self._imported.add(name)
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (only a warm-up: the child imports what it needs)
                pass

    def load(self, fab_id: str, fab_version: str, fab_hash: str) -> None:
        """Import the ClientApp of an installed FAB here, with Flower's loader (as ``flwr-clientapp`` does)."""
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.config import get_project_dir
        from flwr.supercore import log

        started = time.perf_counter()
        drop_app_modules(self.warm.project_dir if self.warm else None)
        self.warm = None
        try:
            client_app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(fab_id, fab_version, fab_hash)
        except Exception as exc:  # noqa: BLE001 (children load it themselves, as before)
            drop_app_modules(get_project_dir(fab_id, fab_version, fab_hash))
            log(WARNING, "astroscale launcher: could not preload %s %s (%s); each message loads it", fab_id, fab_version, exc)
            return
        seconds = time.perf_counter() - started
        self.warm = WarmApp(fab_hash, get_project_dir(fab_id, fab_version, fab_hash), client_app, seconds)
        log(INFO, "astroscale launcher: %s %s (FAB %s) imported in %.2f s; reused by every message",
            fab_id, fab_version, fab_hash[:8], seconds)

    # -- child side ------------------------------------------------------------------------

    def use_in_child(self, run_clientapp_module) -> None:
        """In a forked child: give ``run_clientapp`` an install and a loader that reuse the warm app."""
        os.close(self._read)
        os.set_blocking(self._write, False)  # never wait on a launcher that is not reading
        self._child_modules = set(sys.modules)
        real_install = run_clientapp_module.install_from_fab
        real_loader = run_clientapp_module.get_load_client_app_fn
        warm, child = self.warm, self

        def install_from_fab(fab_file, install_dir=None, skip_prompt=False):
            if (warm is not None and isinstance(fab_file, bytes) and install_dir is None and warm.project_dir.is_dir()
                    and hashlib.sha256(fab_file).hexdigest() == warm.fab_hash):
                return warm.project_dir  # what Flower returns for an installed FAB, without unzipping it again
            return real_install(fab_file, install_dir, skip_prompt)

        def get_load_client_app_fn(default_app_ref, app_path, multi_app):
            load = real_loader(default_app_ref, app_path, multi_app)

            def _load(fab_id: str, fab_version: str, fab_hash: str):
                child._child_fab = fab_hash
                if warm is not None and fab_hash == warm.fab_hash:
                    return warm.client_app
                drop_app_modules(warm.project_dir if warm else None)
                client_app = load(fab_id, fab_version, fab_hash)
                child._report({"fab_id": fab_id, "fab_version": fab_version, "fab_hash": fab_hash})
                return client_app

            return _load

        run_clientapp_module.install_from_fab = install_from_fab
        run_clientapp_module.get_load_client_app_fn = get_load_client_app_fn

    def report_imports(self) -> None:
        """In a child that ran a message: tell the launcher which modules the message imported."""
        if self._child_fab is not None and self.warm is not None and self._child_fab == self.warm.fab_hash:
            new = sorted(set(sys.modules) - self._child_modules)
            for start in range(0, len(new), 50):  # lines under PIPE_BUF
                self._report({"modules": new[start:start + 50], "fab_hash": self._child_fab})

    def _report(self, report: dict) -> None:
        line = json.dumps(report).encode() + b"\n"
        if len(line) > 4096:  # PIPE_BUF: larger writes may interleave with another child's
            return
        try:
            os.write(self._write, line)
        except OSError:
            pass  # the launcher is gone or not reading: it learns from a later message
