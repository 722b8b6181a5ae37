"""Atomic file output: write to a temporary file in the same directory, then rename.

A crash never leaves a half-written file under the final name. A temporary's name carries its
writer (``.<name>.<pid>@<host>~<random>.tmp``), so the next write of the same name removes the
temporaries of writers that died (a SIGKILL runs no clean-up): they never pile up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from astroscale_fl.errors import ConfigError, DataError


def _nearest_existing(target: Path, path: str | os.PathLike[str], key: str) -> Path:
    """``target`` or its nearest existing ancestor; a name that cannot be looked up (too long, a loop of
    links) is one line naming ``key`` and ``path`` as given."""
    try:
        return next(p for p in (target, *target.parents) if p.exists())
    except OSError as exc:
        raise ConfigError(f"{key} {path}: cannot write ({exc.strerror})") from None


def check_writable_folder(path: str | os.PathLike[str], key: str) -> None:
    """Folder ``path`` exists or can be made, and can be written (``key`` names it in the error):
    checked before any work, so a run does not fail at its end, or with a library's traceback."""
    existing = _nearest_existing(Path(path).resolve(), path, key)
    if not existing.is_dir():
        raise ConfigError(f"{key} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path}: {existing} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_WRITER = re.compile(r"(\d+)@(.+)~[^~]+")


def _prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}@{socket.gethostname()}~"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host still runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(final: Path) -> None:
    """Remove the temporaries of ``final`` left by writers on this host that are no longer running."""
    host = socket.gethostname()
    start = f".{final.name}."
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        name = sibling.name
        if not (name.startswith(start) and name.endswith(".tmp")):
            continue
        writer = _WRITER.fullmatch(name[len(start):-len(".tmp")])
        if writer and writer.group(2) == host and not pid_alive(int(writer.group(1))):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    sibling.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``mode`` (e.g. ``0o600`` for a private key) holds from the temporary file's creation on,
    so no other user can ever read a byte; by default the file gets the umask's permissions.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent)  # created 0600
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (with permissions ``mode`` from the first byte, if given)."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _temp_dir_beside(anchor: Path) -> Path:
    """A fresh temporary directory named after ``anchor``'s writer, in ``anchor``'s folder (made when
    missing), after dead writers' leftovers there are removed; permissions as the umask gives."""
    anchor.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(anchor)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(anchor), suffix=".tmp", dir=anchor.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    An existing directory at ``path`` is replaced only after the new one is complete.
    """
    final = Path(path)
    tmp = _temp_dir_beside(final)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f"{_prefix(final)}old.tmp")  # a crash here leaves a temp the next write removes
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(path: str | os.PathLike[str], last: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success move each of its files into directory ``path``.

    Unlike :func:`atomic_directory`, other files already in ``path`` stay. ``path`` is created
    only on success (a failed write leaves no empty folder); when it exists the temporary
    directory is made inside it (its parent may be read-only). ``last``: the file moved last (a
    reader that checks for it then finds the others).
    """
    final = Path(path)
    tmp = _temp_dir_beside(final / f".{final.name}" if final.is_dir() else final)
    try:
        yield tmp
        if not final.is_dir():
            try:
                os.rename(tmp, final)  # the whole folder at once
                return
            except OSError:
                if not final.is_dir():  # not "another writer made it first"
                    raise
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == last):
            os.replace(item, final / item.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_directory_target(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse (one line naming ``what``) a directory path that is, or lies under, an existing file."""
    target = Path(path)
    blocking = _nearest_existing(target, path, what)
    if not blocking.is_dir():
        raise DataError(f"{what} {path}: {blocking} is a file, not a directory; give a directory")
    return target
