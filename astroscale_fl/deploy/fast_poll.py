"""``astroscale-fl node supernode``: Flower's own SuperNode with short idle and reply polls.

Flower 1.41's SuperNode loop (``flwr.supernode.start_client_internal``) sleeps 3 s whenever a pull
from the SuperLink finds no message, and 0.5 s between checks for the ClientApp's reply. Right
after a node pushes its reply it pulls again, finds nothing (the server still waits for the other
nodes) and sleeps 3 s, so the next round's message waits up to 3 s at every node: with one
message per round that is most of a round on loopback.

This command runs the unmodified ``flower-supernode`` entry point in this process after giving
that one module a ``time`` whose ``sleep`` is capped: the idle pull's 3 s at ``--poll-interval``
(default 0.2 s), the local 0.5 s waits (for the ClientApp's reply, in the node's own memory) at
0.05 s. Everything else (arguments, TLS, node authentication, isolation modes, the Runtime API)
is Flower's. The cost: while idle, each node pulls ``1 / interval`` times a second instead of
once every 3 s (the SuperLink serves ``nodes / interval`` pulls a second).

One more difference: a second SIGTERM/SIGINT while Flower's graceful exit runs is ignored (Flower
resets its handlers before it deactivates the node at the SuperLink, so a second signal, e.g. the
whole process group's plus start-supernode.sh's own, killed it half way and left the node
registered as active, and the same key could not rejoin); SIGKILL still stops it at once.

It patches Flower's internals, so it checks first that they have the shape it was written for
(whatever the version number: the loop still sleeps 3 s / 0.5 s through its ``time`` global and
registers its signal handlers through ``register_signal_handlers``; the object pulls still take
``initial_backoff`` / ``backoff_cap``). flwr 1.41 and 1.42 have that shape; anything else is
refused with a one-line error: use plain ``flower-supernode`` then.
"""

from __future__ import annotations

import inspect
import re
import signal
import sys
import time as _time
import types

from astroscale_fl.errors import ConfigError, report_user_errors

DEFAULT_POLL_INTERVAL = 0.2
LOCAL_WAIT = 0.05  # cap of the sub-second sleeps: waits on the node's own in-memory state, no network
# The sleeps this shim shortens, as they read in flwr 1.41/1.42's start_client_internal.py.
EXPECTED_SLEEPS = ("time.sleep(3)", "time.sleep(0.5)")


class CappedTime(types.ModuleType):
    """The ``time`` module, except that ``sleep`` waits at most ``pull_interval`` seconds where Flower
    asks for a second or more (the idle pull), and at most ``local_wait`` for shorter waits."""

    def __init__(self, pull_interval: float, local_wait: float = LOCAL_WAIT) -> None:
        super().__init__("time")
        self.pull_interval, self.local_wait = pull_interval, min(local_wait, pull_interval)

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(seconds, self.pull_interval if seconds >= 1 else self.local_wait))

    def __getattr__(self, name: str):
        return getattr(_time, name)


PULL_BACKOFF_PARAMETERS = ("initial_backoff", "backoff_cap")  # of inflatable_utils' object pulls


def check_flower(module: types.ModuleType, pulls: tuple = ()) -> None:
    """Raise :class:`ConfigError` unless ``module`` (the SuperNode loop) and the object-pull functions
    ``pulls`` have the shape this shim patches: the sleeps, the signal-handler hook and the back-off
    parameters it replaces. The version number is not looked at."""
    hint = "use plain flower-supernode (or deploy supernode --cold)"
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        raise ConfigError(f"node supernode: cannot read the source of {module.__name__}; {hint}") from None
    if not callable(getattr(module, "register_signal_handlers", None)) or "register_signal_handlers(" not in source:
        raise ConfigError(f"node supernode: {module.__name__} no longer registers its signal handlers as expected; {hint}")
    missing = [s for s in EXPECTED_SLEEPS if s not in source]
    if missing or not re.search(r"^import time$", source, re.MULTILINE):
        raise ConfigError(f"node supernode: {module.__name__} no longer sleeps through its `time` module as expected "
                          f"(missing: {', '.join(missing) or 'import time'}); {hint}")
    for func in pulls:
        params = inspect.signature(func).parameters
        absent = [p for p in PULL_BACKOFF_PARAMETERS if p not in params or params[p].default is inspect.Parameter.empty]
        if absent:
            raise ConfigError(f"node supernode: {func.__module__}.{func.__name__} no longer takes {', '.join(absent)} "
                              f"with a default; {hint}")


def object_pulls() -> tuple:
    """Flower's object-pull functions whose retry back-off :func:`quick_object_pulls` shortens."""
    from flwr.supercore.inflatable import inflatable_utils

    return inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree


def quick_object_pulls() -> None:
    """Retry Flower's object pulls in this process after 0.05 s (doubling to 0.5 s) instead of 1 s (to 10 s).

    A message's objects are pulled by whoever receives it as soon as the message itself is
    registered, often while the sender is still pushing them: the SuperNode pulls the server's
    message from the SuperLink while the ServerApp pushes it, the ServerApp pulls a reply while the
    SuperNode pushes it, a ClientApp pulls from the SuperNode while the SuperNode still stores it.
    Flower's first retry then costs a whole second on each of the three hops, every round. Only the
    retry timing of this process changes (a few more cheap requests while waiting); the pulls,
    their limits and errors are Flower's.
    """
    wanted = {"initial_backoff": 0.05, "backoff_cap": 0.5}
    for func in object_pulls():
        params = list(inspect.signature(func).parameters.values())
        if func.__kwdefaults__:
            func.__kwdefaults__.update({k: v for k, v in wanted.items() if k in func.__kwdefaults__})
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if func.__defaults__:
            names = positional[len(positional) - len(func.__defaults__):]
            func.__defaults__ = tuple(wanted.get(n, d) for n, d in zip(names, func.__defaults__))


def install(poll_interval: float):
    """Check Flower and cap the SuperNode loop's sleeps at ``poll_interval``; returns the entry point."""
    from flwr.supernode import start_client_internal as loop

    check_flower(loop, object_pulls())
    loop.time = CappedTime(poll_interval)
    quick_object_pulls()
    flower_registered = []
    register = loop.register_signal_handlers

    def register_signal_handlers(*args, **kwargs):  # Flower saves ours as the handlers it restores on exit
        flower_registered.append(True)
        return register(*args, **kwargs)

    def on_signal(signum, _frame):
        if not flower_registered:  # still starting: stop now
            raise SystemExit(128 + signum)
        # else Flower's graceful exit is running (it restored this handler): let it finish

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGQUIT", None)):
        if sig is not None:
            signal.signal(sig, on_signal)
    loop.register_signal_handlers = register_signal_handlers
    from flwr.supernode.cli import flower_supernode

    return flower_supernode


def parse_poll_interval(argv: list[str]) -> tuple[float, list[str]]:
    """Take ``--poll-interval S`` (or ``--poll-interval=S``) out of ``argv``; the rest is flower-supernode's."""
    interval, rest, args = DEFAULT_POLL_INTERVAL, [], iter(argv)
    for arg in args:
        if arg == "--poll-interval" or arg.startswith("--poll-interval="):
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "")
            try:
                interval = float(value)
            except ValueError:
                raise ConfigError(f"--poll-interval: expected seconds (0.01..3), got {value!r}") from None
            if not 0.01 <= interval <= 3:
                raise ConfigError(f"--poll-interval: expected seconds (0.01..3), got {value}")
        else:
            rest.append(arg)
    return interval, rest


HELP = """usage: astroscale-fl node supernode [--poll-interval S] [flower-supernode arguments...]

Flower's flower-supernode with its idle pull (3 s) and reply polls (0.5 s) capped at S seconds
(default 0.2): a round's message reaches the node within S instead of up to 3 s. Idle cost: the
SuperLink serves nodes / S pulls a second. Checks first that Flower's loop has the sleeps and
handlers it replaces (flwr 1.41 and 1.42 do); anything else is refused (use plain flower-supernode). `astroscale-fl node supernode -- --help` shows flower-supernode's own options."""


@report_user_errors
def main(argv: list[str]) -> int:
    """``astroscale-fl node supernode [--poll-interval S] [flower-supernode args...]``."""
    if argv[:1] in (["-h"], ["--help"]):
        print(HELP)
        return 0
    interval, rest = parse_poll_interval(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    entry = install(interval)
    sys.argv = ["flower-supernode", *rest]
    entry()
    return 0
