"""The warm ClientApp runtime: a long-lived launcher that forks one ``flwr-clientapp`` per message.

Flower's SuperNode in ``--isolation process`` mode does not start ClientApp processes itself; it
hands out a token per message through its Runtime API (``AcquireTask``) to whoever runs them. In
the default (subprocess) mode that is ``flower-superexec``, which polls every second and starts
``flwr-clientapp`` fresh for every message: Python start-up plus importing torch, pandas and pyarrow
(2-4 s on 2 cores) each time. This launcher takes its place:

1. it imports the heavy libraries the ClientApp uses once (torch and its optimiser machinery,
   numpy, pandas, pyarrow, omegaconf, opacus); the app's own code comes from the FAB the
   SuperNode installed (and, with ``--trusted-entities``, verified), as with ``flwr-clientapp``:
   the first message of a FAB installs and imports it in its child, then the launcher imports
   that same installed ClientApp once and later messages of that FAB reuse it
   (:mod:`astroscale_fl.deploy.app_cache`), as they reuse what messages imported lazily;
2. it polls ``AcquireTask`` every ``--poll`` seconds (0.05 s), HMAC-signed with the SuperExec
   secret the SuperNode was started with, on the loopback Runtime API;
3. for each token it forks; the child runs Flower's own ``run_clientapp`` (pull message and
   Context, run the ClientApp, push the reply and Context.state) and exits. ``Context.state`` keeps
   living in the SuperNode, as with ``flwr-clientapp``; the launcher holds no node state.

If the launcher dies, its children die with it (``PR_SET_PDEATHSIG``): the message in flight gets
no reply, Flower's task heartbeat expires and the SuperNode sends an error reply, which the
server counts as failed; a DP ledger spend written before training stands. CUDA is never
initialised here (asserted before every fork): a forked child may use it, the launcher may not.
``scripts/start-supernode.sh --warm`` starts it (and restarts it if it dies).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from logging import INFO, WARNING

from astroscale_fl.deploy.app_cache import AppCache
from astroscale_fl.deploy.fast_poll import quick_object_pulls

PREIMPORT = ("torch", "torch.nn", "torch.optim", "torch._dynamo", "numpy", "pandas", "pyarrow", "pyarrow.parquet",
             "omegaconf", "opacus", "flwr.app", "flwr.clientapp", "flwr.supernode.runtime.run_clientapp", "flwr.cli.install")
_PR_SET_PDEATHSIG = 1


@dataclass
class LauncherStats:
    """What the launcher did (served in ``GET /status`` and as metrics)."""

    started_at: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)
    clientapps_started: int = 0
    clientapps_failed: int = 0
    running: dict[int, float] = field(default_factory=dict)  # child pid -> fork time
    warm_import_seconds: float = 0.0


def preimport() -> float:
    """Import the ClientApp's heavy dependencies once; returns the seconds it took."""
    started = time.perf_counter()
    for name in PREIMPORT:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    return time.perf_counter() - started


def cuda_initialised() -> bool:
    """Whether this process has initialised CUDA (never true in the launcher)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def runtime_client(address: str, secret: bytes | None, root_certificates: str | None = None, retry_invoker=None):
    """A client of the SuperNode's Runtime API, signing ``AcquireTask`` with the SuperExec secret
    (``retry_invoker``: Flower's simple HTTP retries by default)."""
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret,
                                                         protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
    insecure = root_certificates is None
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
        interceptors=interceptors, retry_invoker=retry_invoker or make_simple_http_retry_invoker())


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the child outlives a killed launcher and finishes its message
        pass


def fork_clientapp(address: str, token: str, root_certificates: str | None, stats: LauncherStats,
                   apps: AppCache | None = None) -> int:
    """Fork a child that runs one ClientApp message with Flower's runtime; returns its pid."""
    if cuda_initialised():
        raise RuntimeError("CUDA was initialised in the launcher; forking now would break it in the child")
    pid = os.fork()
    if pid:
        stats.clientapps_started += 1
        stats.running[pid] = time.time()
        return pid
    code = 1
    try:  # the child: never return into the launcher's loop
        _die_with_parent()
        if os.getppid() != stats.pid:  # the launcher died between fork and prctl
            os._exit(1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime import run_clientapp as runtime

        # the app's code comes from the FAB the SuperNode installed, as in flwr-clientapp: the one the
        # launcher imported from there when it is this message's FAB, else a fresh import
        apps = apps or AppCache()
        apps.use_in_child(runtime)
        run_clientapp = runtime.run_clientapp

        insecure = root_certificates is None
        quick_object_pulls()
        run_clientapp(runtime_api_address=address, token=token, insecure=insecure,
                      certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
                      parent_pid=None, runtime_dependency_install=False)
        code = 0
    except SystemExit as exc:  # flwr_exit ends the task with sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else 1
        if code == 0 and apps is not None:
            apps.report_imports()
    except BaseException:  # noqa: BLE001 (report and leave; the launcher goes on)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # skip the launcher's atexit handlers and finalisers
    return 0  # unreachable


def reap(stats: LauncherStats) -> None:
    """Collect finished children; count the ones that failed."""
    while stats.running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            stats.running.clear()
            return
        if pid == 0:
            return
        stats.running.pop(pid, None)
        if os.waitstatus_to_exitcode(status) != 0:
            stats.clientapps_failed += 1


def serve_forever(address: str, secret: bytes | None, poll: float, stats: LauncherStats,
                  root_certificates: str | None = None, should_stop=lambda: False) -> None:
    """Acquire ClientApp tasks from the SuperNode and fork one child per token, until stopped."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore import log
    from flwr.supercore.constant import TaskType

    client = runtime_client(address, secret, root_certificates)
    apps = AppCache()
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    log(INFO, "astroscale launcher: warm (imports %.1f s); acquiring ClientApp tasks from %s every %.2f s",
        stats.warm_import_seconds, address, poll)
    try:
        while not should_stop():
            reap(stats)
            apps.load_reported()
            try:
                res = client.AcquireTask(request)
            except Exception as exc:  # noqa: BLE001 (SuperNode restarting: retry)
                log(WARNING, "astroscale launcher: AcquireTask failed (%s); retrying", exc)
                time.sleep(1.0)
                continue
            if res.HasField("task") and res.token:
                fork_clientapp(address, res.token, root_certificates, stats, apps)
                continue  # another message may be waiting
            time.sleep(poll)
    finally:
        client.close()
