"""Learning tasks: which rows of a catalog to use, the target, and the raw model inputs.

A task turns a source catalog into a *task frame*: one row per usable object with an ``id``
column, the raw input columns (in model-card order) and the target column. Everything after
that (splitting, preprocessing, training) is task-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from astroscale_fl.data.checks import (
    DEFAULT_MAX_BAD_FRACTION,
    check_has_rows,
    check_task_columns,
    check_task_frame,
    coerce_numeric,
)
from astroscale_fl.data.filter_expr import parse_filter
from astroscale_fl.data.sources import hipparcos
from astroscale_fl.data.split import PartitionColumns
from astroscale_fl.data.tables import read_table
from astroscale_fl.errors import ConfigError, DataError, short_list
from astroscale_fl.simulator.cache import cached_catalog
from astroscale_fl.simulator.galaxy import C_KMS


@dataclass(frozen=True)
class Feature:
    """A raw model input: its column name, unit and physically valid range."""

    name: str
    unit: str
    low: float = -np.inf
    high: float = np.inf
    description: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """What a task predicts from what; the loader builds the task frame from config."""

    name: str
    target: str
    target_unit: str
    inputs: tuple[Feature, ...]
    derived: tuple[str, ...] = ()
    description: str = ""
    target_range: tuple[float, float] = (-np.inf, np.inf)  # physical bounds (DP statistics clip to them)
    loader: Callable[[object], pd.DataFrame] = field(default=lambda cfg: pd.DataFrame(), repr=False)
    partition_columns: PartitionColumns = PartitionColumns()
    default_partition: str = "iid"  # the task's natural split, what partition=auto picks
    #: The unit errors read best in and the factor from ``target_unit`` (z -> km/s for v_r = cz).
    display_unit: tuple[str, float] | None = None

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]

    def load(self, task_cfg: object) -> pd.DataFrame:
        """Build the task frame (``id``, inputs, target) from the task's config section."""
        frame = self.loader(task_cfg)
        get = getattr(task_cfg, "get", lambda key, default=None: default)
        frame = coerce_numeric(frame, self.input_names, self.target, get("path") and f"task.path {get('path')}" or f"task {self.name}",
                               float(get("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)))
        frame = frame.loc[np.isfinite(frame[self.target].to_numpy())].reset_index(drop=True)  # empty target cells
        check_task_frame(frame, self.name, self.input_names, self.target, get("filter"))
        return frame


# --- hipparcos_absmag ---------------------------------------------------------------------

HIPPARCOS_ABSMAG_INPUTS = (
    Feature("RArad", "rad", 0.0, 2 * np.pi, "right ascension"),
    Feature("DErad", "rad", -np.pi / 2, np.pi / 2, "declination"),
    Feature("pmRA", "mas/yr", -2e4, 2e4, "proper motion in RA*cos(Dec)"),
    Feature("pmDE", "mas/yr", -2e4, 2e4, "proper motion in Dec"),
    Feature("Hpmag", "mag", -2.0, 16.0, "Hipparcos magnitude"),
    Feature("e_Hpmag", "mag", 0.0, 2.0, "error on mean Hpmag"),
    Feature("sHp", "mag", 0.0, 5.0, "scatter of Hpmag"),
    Feature("B-V", "mag", -1.0, 6.0, "colour index"),
    Feature("V-I", "mag", -1.0, 10.0, "V-I colour index"),
)


def absolute_magnitude(apparent_mag: np.ndarray, parallax_mas: np.ndarray) -> np.ndarray:
    """Absolute magnitude ``M = m + 5 log10(Plx / 100)`` for a parallax in milliarcseconds."""
    return apparent_mag + 5.0 * np.log10(parallax_mas / 100.0)


def load_hipparcos_absmag(task_cfg: object) -> pd.DataFrame:
    """Stars with ``Plx / e_Plx >= task.min_parallax_snr``; target ``M_Hp`` from Hpmag and Plx."""
    catalog = hipparcos.read_hipparcos(getattr(task_cfg, "path", None) or None)
    min_snr = float(task_cfg.min_parallax_snr)
    plx, e_plx = catalog["Plx"].to_numpy(), catalog["e_Plx"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = (plx > 0) & (e_plx > 0) & (plx / e_plx >= min_snr)
    rows = catalog.loc[keep]
    frame = pd.DataFrame({"id": rows["HIP"].to_numpy()})
    for feature in HIPPARCOS_ABSMAG_INPUTS:
        frame[feature.name] = rows[feature.name].to_numpy(dtype=np.float64)
    frame["M_Hp"] = absolute_magnitude(rows["Hpmag"].to_numpy(), rows["Plx"].to_numpy())
    return frame


HIPPARCOS_ABSMAG = TaskSpec(
    name="hipparcos_absmag",
    default_partition="sky",
    target="M_Hp",
    target_unit="mag",
    inputs=HIPPARCOS_ABSMAG_INPUTS,
    derived=("pm_total", "reduced_pm", "sin_b", "cos_b"),
    target_range=(-16.0, 21.0),  # absolute magnitudes of stars (hypergiants .. faintest dwarfs)
    description="Absolute Hipparcos magnitude from photometry and astrometry without parallax",
    loader=load_hipparcos_absmag,
    partition_columns=PartitionColumns(dec="DErad", dec_unit="rad", magnitude="Hpmag", target="M_Hp"),
)


# --- catalog: any table a user brings -------------------------------------------------------


def load_catalog(task_cfg) -> pd.DataFrame:
    """Rows of ``task.path`` passing ``task.filter``; all columns kept, as read.

    :meth:`TaskSpec.load` then makes the inputs and target numbers (garbage stops the run or
    goes to the quarantine) and drops rows whose target is empty.
    """
    table = read_table(str(task_cfg.path), role="task.path: catalog file")
    needed = list(task_cfg.features) + [task_cfg.target]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{task_cfg.path}: missing column(s) {short_list(missing)}; columns are {short_list(table.columns, 30)}")
    check_has_rows(table, f"task.path {task_cfg.path}")
    if task_cfg.get("filter"):
        table = parse_filter(task_cfg.filter).apply(table)
    id_column = task_cfg.get("id_column")
    ids = table[id_column].astype(str) if id_column else np.arange(len(table)).astype(str)
    table = table.drop(columns=["id"], errors="ignore")
    table.insert(0, "id", ids)
    return table


def catalog_task(task_cfg) -> TaskSpec:
    """The task a catalog config describes (inputs = ``task.features``)."""
    features = list(task_cfg.features)
    if not features:
        raise ConfigError("task.features: list the input columns, e.g. 'task.features=[teff,logg,fe_h]'")
    check_task_columns(features, str(task_cfg.target))
    if task_cfg.get("filter"):
        parse_filter(task_cfg.filter)  # refused before any data is read
    return TaskSpec(
        name="catalog",
        target=str(task_cfg.target),
        target_unit="",
        inputs=tuple(KNOWN_COLUMNS.get(name, Feature(name, "")) for name in features),
        description=f"{task_cfg.target} from {', '.join(features)} ({task_cfg.path})",
        loader=load_catalog,
        partition_columns=PartitionColumns(dec=task_cfg.get("dec_column"), dec_unit="deg",
                                           magnitude=task_cfg.get("magnitude_column"), target=str(task_cfg.target)),
    )


# --- survey_redshift: the multi-survey stellar simulator -----------------------------------

SURVEY_REDSHIFT_INPUTS = (
    Feature("ra", "deg", 0.0, 359.999999999, "right ascension (ICRS), in [0, 360)"),
    Feature("dec", "deg", -90.0, 90.0, "declination (ICRS)"),
    Feature("teff", "K", 2000.0, 60000.0, "effective temperature"),
    Feature("logg", "dex (cgs)", -1.0, 6.0, "surface gravity"),
    Feature("fe_h", "dex", -5.0, 1.5, "metallicity [Fe/H]"),
    Feature("snr", "", 0.0, 1e5, "spectrum signal-to-noise ratio (>= 0)"),
    Feature("parallax", "mas", -1000.0, 1000.0, "parallax (may be negative for distant stars)"),
)


def load_survey_redshift(task_cfg) -> pd.DataFrame:
    """Simulated stars of the configured surveys (cached as Parquet in the user cache directory, simulator/cache.py)."""
    frame = cached_catalog(int(task_cfg.n_stars), int(task_cfg.seed), list(task_cfg.surveys))
    out = frame[[f.name for f in SURVEY_REDSHIFT_INPUTS] + ["z", "expected_z"]].copy()
    out.insert(0, "id", np.arange(len(out)).astype(str))
    out["survey"] = frame["survey"].astype(str).to_numpy()
    return out


SURVEY_REDSHIFT = TaskSpec(
    name="survey_redshift",
    default_partition="by_survey",
    target="z",
    target_unit="",
    inputs=SURVEY_REDSHIFT_INPUTS,
    target_range=(-0.01, 0.01),  # |v_r| < 3,000 km/s: beyond any Galactic star
    description="Doppler redshift z = v_r / c of stars from ra, dec, teff, logg, fe_h, snr, parallax (simulated surveys)",
    loader=load_survey_redshift,
    partition_columns=PartitionColumns(dec="dec", dec_unit="deg", target="z"),
    display_unit=("km/s", C_KMS),
)

#: Physical ranges a ``catalog`` task applies to columns it knows by name (the survey schema's).
KNOWN_COLUMNS: dict[str, Feature] = {f.name: f for f in SURVEY_REDSHIFT_INPUTS}

TASKS: dict[str, TaskSpec] = {HIPPARCOS_ABSMAG.name: HIPPARCOS_ABSMAG, SURVEY_REDSHIFT.name: SURVEY_REDSHIFT}
DYNAMIC_TASKS: dict[str, Callable[[object], TaskSpec]] = {"catalog": catalog_task}


def default_partition(name: str) -> str:
    """What ``partition=auto`` picks for the task ``name``: its spec's natural split (a catalog's: iid)."""
    spec = TASKS.get(name)
    return spec.default_partition if spec is not None else TaskSpec.default_partition


def display_unit(task_name: str) -> tuple[str, float]:
    """The unit a task's errors (RMSE) are shown in, and the factor from its target's unit (``""`` and 1
    for a task without a fixed unit, such as ``catalog``)."""
    spec = TASKS.get(task_name)
    if spec is None:
        return "", 1.0
    return spec.display_unit or (spec.target_unit, 1.0)


def get_task(task) -> TaskSpec:
    """The task spec for a task config (or, for tasks whose spec is fixed, a task name)."""
    name = task if isinstance(task, str) else task.name
    if name in TASKS:
        return TASKS[name]
    if name in DYNAMIC_TASKS and not isinstance(task, str):
        return DYNAMIC_TASKS[name](task)
    known = sorted(TASKS) + sorted(DYNAMIC_TASKS)
    raise ConfigError(f"task.name: unknown task {name!r} (or it needs its config); expected one of {known}")
