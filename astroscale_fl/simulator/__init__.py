"""Survey simulator: a physical Milky Way model observed by APOGEE, SDSS/SEGUE, RAVE and Gaia RVS.

Labels come from physics: ``z`` is each star's heliocentric line-of-sight velocity over c, drawn
from a Galactic model with published density laws, velocity ellipsoids and solar motion
(:mod:`.galaxy`), for stars from a simple population model (:mod:`.stars`), as selected and
measured by each survey (:mod:`.surveys`).  The public API lives in :mod:`.simulate`.
"""

from .simulate import (
    COLUMNS,
    DEFAULT_N_STARS,
    DEFAULT_SIZES,
    INPUT_COLUMNS,
    INPUT_UNITS,
    TARGET,
    TRUTH_COLUMNS,
    ceiling_r2,
    resolve_sizes,
    simulate_catalog,
    write_parquet,
)
from .surveys import SURVEY_NAMES, SURVEYS

__all__ = [
    "COLUMNS",
    "DEFAULT_N_STARS",
    "DEFAULT_SIZES",
    "INPUT_COLUMNS",
    "INPUT_UNITS",
    "SURVEYS",
    "SURVEY_NAMES",
    "TARGET",
    "TRUTH_COLUMNS",
    "ceiling_r2",
    "resolve_sizes",
    "simulate_catalog",
    "write_parquet",
]
