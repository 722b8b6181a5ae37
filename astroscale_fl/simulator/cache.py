"""Simulated catalogs cached as Parquet under ``data/cache/`` (one file per size, seed, surveys).

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
    """``$ASTROSCALE_FL_CACHE`` or ``data/cache`` next to the package's repository."""
    env = os.environ.get("ASTROSCALE_FL_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data" / "cache"


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
