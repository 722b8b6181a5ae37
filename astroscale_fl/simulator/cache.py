"""Simulated catalogs cached as Parquet in the user's cache directory (one file per size, seed, surveys):
``$ASTROSCALE_FL_CACHE``, else ``$XDG_CACHE_HOME/astroscale-fl``, else ``~/.cache/astroscale-fl``;
never inside the installation.

Every simulation node and the server need the same catalog; generating it once per machine
and reading it back is faster than re-simulating in each process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from astroscale_fl.simulator.simulate import simulate_catalog, write_parquet


def cache_dir() -> Path:
    """``$ASTROSCALE_FL_CACHE``, else ``$XDG_CACHE_HOME/astroscale-fl`` (XDG's default: ``~/.cache``)."""
    env = os.environ.get("ASTROSCALE_FL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: a relative value is ignored
    return base / "astroscale-fl"


def cached_catalog(n_stars: int, seed: int, surveys: list[str]) -> pd.DataFrame:
    """``simulate_catalog(n_stars, seed, surveys)``, read from the cache when already made."""
    key = hashlib.sha256(f"{n_stars}|{seed}|{','.join(surveys)}|v3".encode()).hexdigest()[:16]
    path = cache_dir() / f"survey-catalog-{key}.parquet"
    if path.is_file():
        try:
            return pd.read_parquet(path)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    frame = simulate_catalog(n_stars=n_stars, seed=seed, surveys=surveys)
    try:
        write_parquet(frame, path)
    except OSError:
        pass  # a read-only data dir only costs the re-simulation next time
    return frame
