"""Fast checks (no processes) of the fast-poll SuperNode's guard and of the launcher's app cache."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import sys
import time
import types
from pathlib import Path

import pytest
from flwr.supernode import start_client_internal as loop

from astroscale_fl.deploy import fast_poll
from astroscale_fl.deploy.app_cache import AppCache, WarmApp
from astroscale_fl.errors import USER_ERROR_EXIT, ConfigError


def _module_from_source(tmp_path: Path, source: str) -> types.ModuleType:
    path = tmp_path / f"fake_loop_{len(list(tmp_path.iterdir()))}.py"  # a new file each time: no stale bytecode
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_checks_the_shape_of_the_code_not_the_version(tmp_path, monkeypatch):
    import flwr

    fast_poll.check_flower(loop, fast_poll.object_pulls())  # the installed flwr (1.41 here, 1.42 in test-flower-versions.sh)
    monkeypatch.setattr(flwr, "__version__", "9.99.0")  # a version number alone is no reason to refuse
    fast_poll.check_flower(loop, fast_poll.object_pulls())
    changed = _module_from_source(tmp_path, "import time\n\ndef register_signal_handlers():\n    pass\n\n"
                                            "def loop():\n    register_signal_handlers()\n    time.sleep(1)\n")
    with pytest.raises(ConfigError, match=r"missing: time.sleep\(3\), time.sleep\(0.5\).*use plain flower-supernode"):
        fast_poll.check_flower(changed)
    other_time = _module_from_source(tmp_path, "from time import sleep as time_sleep\ntime = None\n"
                                                "register_signal_handlers = print\nregister_signal_handlers()\n"
                                                "# time.sleep(3) time.sleep(0.5)\n")
    with pytest.raises(ConfigError, match="import time"):
        fast_poll.check_flower(other_time)
    no_handlers = _module_from_source(tmp_path, "import time\n# time.sleep(3) time.sleep(0.5)\n")
    with pytest.raises(ConfigError, match="signal handlers"):
        fast_poll.check_flower(no_handlers)
    never_registered = _module_from_source(tmp_path, "import time\n# time.sleep(3) time.sleep(0.5)\n"
                                                      "register_signal_handlers = print\n")
    with pytest.raises(ConfigError, match="signal handlers"):
        fast_poll.check_flower(never_registered)

    def pull_without_backoff(store, *, max_retries=3):
        return store

    with pytest.raises(ConfigError, match=r"pull_without_backoff no longer takes initial_backoff, backoff_cap"):
        fast_poll.check_flower(loop, (pull_without_backoff,))


def test_command_refuses_another_shape_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(loop, "time", loop.time)  # restored whatever happens
    monkeypatch.setattr(fast_poll, "EXPECTED_SLEEPS", ("time.sleep(7)",))  # as if Flower had changed its sleeps
    with pytest.raises(SystemExit) as exited:
        fast_poll.main(["--poll-interval", "0.1", "--insecure", "--superlink", "127.0.0.1:1"])
    assert exited.value.code == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: node supernode: flwr.supernode.start_client_internal no longer sleeps through its `time` module")
    assert loop.time is time  # nothing patched


def test_poll_interval_option_and_capped_sleeps(monkeypatch):
    assert fast_poll.parse_poll_interval(["--insecure", "--poll-interval", "0.1", "--port", "9"]) == (0.1, ["--insecure", "--port", "9"])
    assert fast_poll.parse_poll_interval(["--poll-interval=0.5"]) == (0.5, [])
    assert fast_poll.parse_poll_interval([])[0] == fast_poll.DEFAULT_POLL_INTERVAL
    for bad in ("0", "abc", "5"):
        with pytest.raises(ConfigError, match="--poll-interval: expected seconds"):
            fast_poll.parse_poll_interval(["--poll-interval", bad])
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(loop, "register_signal_handlers", lambda *a, **k: None)  # Flower's, not run in this test
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    try:
        entry = fast_poll.install(0.02)
        on_signal = signal.getsignal(signal.SIGTERM)
        with pytest.raises(SystemExit) as exited:  # a signal while starting stops it
            on_signal(signal.SIGTERM, None)
        assert exited.value.code == 128 + signal.SIGTERM
        loop.register_signal_handlers()  # Flower registers its graceful handlers (and restores ours when exiting)
        assert on_signal(signal.SIGTERM, None) is None  # a second signal does not cut Flower's graceful exit short
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert isinstance(loop.time, fast_poll.CappedTime) and callable(entry)
    started = time.perf_counter()
    loop.time.sleep(3)  # the idle pull: capped at the poll interval
    loop.time.sleep(0.5)  # a local wait: capped at 0.02 (the smaller of it and 0.05)
    assert time.perf_counter() - started < 0.5
    assert abs(loop.time.time() - time.time()) < 1 and loop.time.monotonic is time.monotonic  # the rest is `time`


class _FakeRuntime(types.SimpleNamespace):
    """The two functions of flwr's run_clientapp module the cache replaces, recording their calls."""

    def __init__(self, app_dir: Path) -> None:
        super().__init__(calls=[])
        self.install_from_fab = lambda fab, install_dir=None, skip_prompt=False: self.calls.append("install") or app_dir
        self.get_load_client_app_fn = lambda ref, path, multi: (
            lambda fab_id, version, fab_hash: self.calls.append(("load", fab_hash)) or f"app-{fab_hash}")


def test_app_cache_reuses_the_warm_app_only_for_its_fab(tmp_path, monkeypatch):
    fab = b"a FAB's bytes"
    fab_hash = hashlib.sha256(fab).hexdigest()
    cache = AppCache()
    cache.warm = WarmApp(fab_hash, tmp_path, client_app="warm-app", load_seconds=0.1)
    runtime = _FakeRuntime(tmp_path)
    monkeypatch.setattr(os, "close", lambda fd: None)  # the test process plays both launcher and child
    cache.use_in_child(runtime)
    assert runtime.install_from_fab(fab, skip_prompt=True) == tmp_path and runtime.calls == []  # not unzipped again
    assert runtime.get_load_client_app_fn("", None, True)("astroscale/astroscale-fl", "0.1.0", fab_hash) == "warm-app"
    assert runtime.calls == []
    runtime.install_from_fab(b"another FAB", skip_prompt=True)
    monkeypatch.setitem(sys.modules, "clients", types.ModuleType("clients"))  # the warm app's modules: dropped
    modules = dict(sys.modules)
    try:
        other = runtime.get_load_client_app_fn("", None, True)("astroscale/astroscale-fl", "0.2.0", "f" * 64)
        assert "clients" not in sys.modules and "astroscale_fl.deploy.app_cache" not in sys.modules
    finally:
        sys.modules.update(modules)  # this test process goes on with the modules it had
    assert other == "app-" + "f" * 64 and runtime.calls == ["install", ("load", "f" * 64)]
    # the launcher side reads the child's report and loads that FAB's app
    loaded = []
    monkeypatch.setattr(cache, "load", lambda **report: loaded.append(report))
    cache.load_reported()
    assert loaded == [{"fab_id": "astroscale/astroscale-fl", "fab_version": "0.2.0", "fab_hash": "f" * 64}]


def test_quick_object_pulls_retry_missing_objects_within_a_tenth_of_a_second(monkeypatch):
    """Flower's object pulls retry after 1 s; in our processes the first retry comes after 0.05 s."""
    from flwr.supercore.inflatable import inflatable_utils

    for func in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(func, "__kwdefaults__", dict(func.__kwdefaults__ or {}) or None)
        monkeypatch.setattr(func, "__defaults__", func.__defaults__)
    attempts = []

    def pull_object(object_id: str) -> bytes:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    fast_poll.quick_object_pulls()
    started = time.monotonic()
    assert inflatable_utils.pull_objects(["abc"], pull_object) == {"abc": b"content"}
    assert len(attempts) == 3 and time.monotonic() - started < 0.5  # Flower's own backoff: >= 2.4 s
