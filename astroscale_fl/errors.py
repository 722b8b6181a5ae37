"""User-facing errors: one clear line, a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

#: Exit code for a user mistake (bad input, bad config, missing file).
USER_ERROR_EXIT = 2


class AstroScaleError(Exception):
    """A mistake the user can fix; its message is shown as one line without a traceback.

    The message should name the file, row/column or field, and what was expected.
    """


class ConfigError(AstroScaleError):
    """The composed configuration is invalid (unknown key, wrong type, bad value)."""


class DataError(AstroScaleError):
    """Input data is missing or malformed."""


#: An error line longer than this keeps its head and tail (where the advice is) around " ... ".
MAX_LINE_CHARS = 600


def one_line(message: str, max_chars: int = MAX_LINE_CHARS) -> str:
    """Collapse a message to one line (multi-line library messages included), at most ``max_chars`` long."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    if len(line) <= max_chars:
        return line
    cut = f" ... [{len(line) - max_chars} characters cut] ... "
    head = (max_chars - len(cut)) * 2 // 3
    return line[:head] + cut + line[len(line) - (max_chars - len(cut) - head):]


def short_list(items, limit: int = 10) -> str:
    """``[a, b, c, ... (n more)]``: a list for an error message that stays short."""
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return f"[{shown}, ... ({len(items) - limit} more)]" if len(items) > limit else f"[{shown}]"


class UserArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``error: PROG: ...`` line and exit 2 (argparse
    prints the whole usage first; ``--help`` still prints it)."""

    def error(self, message: str):  # type: ignore[override]
        """Print the mistake as one line and exit with :data:`USER_ERROR_EXIT`."""
        print(f"error: {self.prog}: {one_line(message)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT)


def report_user_errors(func: F) -> F:
    """Decorate a CLI entry point: print ``error: ...`` for user errors and exit non-zero."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AstroScaleError as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
