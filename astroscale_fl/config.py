"""Configuration: compose the Hydra tree under ``conf/`` and validate it.

``conf/config.yaml`` composes one choice per group (task, model, strategy, partition,
privacy, federation, train). After composition :func:`validate` checks the whole config against
the dataclass schemas of :mod:`astroscale_fl.config_schema` (one schema per choice of a group,
picked by its ``name``; defaults live in the YAML alone): unknown keys, ill-typed values and
out-of-range values are rejected with a one-line :class:`ConfigError` naming the key and what
was expected.

The same tree configures ``astroscale-fl train`` (a Hydra app), Hydra multiruns and
``flwr run .`` (its run-config carries Hydra overrides), so there is one source of truth.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from astroscale_fl.config_checks import check_values, require
from astroscale_fl.config_schema import SCHEMAS, SECTIONS, TOP_LEVEL
from astroscale_fl.errors import ConfigError, one_line
from astroscale_fl.federation.selection import SelectionSettings

DEVICES = ("auto", "cpu", "cuda")


# ---- locating and composing the tree -----------------------------------------------------


def conf_dir() -> Path:
    """The ``conf/`` tree: ``$ASTROSCALE_FL_CONF``, the repository's, or the copy inside a wheel."""
    env = os.environ.get("ASTROSCALE_FL_CONF")
    here = Path(__file__).resolve().parent
    path = Path(env) if env else next((p for p in (here.parent / "conf", here / "conf") if p.is_dir()), here.parent / "conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"config tree not found: {path}/config.yaml (set ASTROSCALE_FL_CONF to the conf/ directory)")
    return path


def noise_overrides_target(overrides: list[str]) -> list[str]:
    """``privacy.noise_multiplier=1.1`` given without ``privacy.target_epsilon`` wins over the
    default target: the target is set to null instead of "set exactly one of" an error."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    given = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+") == "privacy.noise_multiplier"]
    if given and given[-1].strip().lower() not in ("null", "none", "") and "privacy.target_epsilon" not in keys:
        return [*overrides, "privacy.target_epsilon=null"]
    return list(overrides)


def compose(overrides: list[str] | str = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (list or one shell-quoted string)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    overrides = noise_overrides_target([o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as exc:  # Hydra raises several types; all are the user's override mistakes
        msg = one_line(str(exc)).split(" Config search path")[0]
        raise ConfigError(f"bad override in {list(overrides)}: {msg}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


# ---- validation ---------------------------------------------------------------------------


def _check_section(cfg: DictConfig, key: str, schema: type) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
    except OmegaConfBaseException as exc:
        msg = one_line(str(exc)).split(" full_key:")[0]
        sub = getattr(exc, "full_key", None)
        where = f"{key}.{sub}" if sub else key
        raise ConfigError(f"{where}: {msg} (schema {schema.__name__})") from None


def validate(cfg: DictConfig, without: tuple[str, ...] = ()) -> DictConfig:
    """Check a composed config against the schemas; return a typed, read-only copy.

    ``without`` names groups the config leaves out on purpose (the nodes' copy has no
    ``strategy``: see :mod:`astroscale_fl.federation.messages`). Raises :class:`ConfigError`
    (one line) on unknown keys, wrong types or bad values.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    known = (set(SCHEMAS) | set(SECTIONS) | set(TOP_LEVEL) | {"mode"}) - set(without)
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; expected some of {sorted(known)}")
    out: dict[str, Any] = {}
    for group, choices in SCHEMAS.items():
        if group in without:
            continue
        section = cfg.get(group)
        name = section.get("name") if isinstance(section, DictConfig) else None
        if name not in choices:
            raise ConfigError(f"{group}: unknown choice {name!r}; expected one of {sorted(choices)}")
        out[group] = _check_section(cfg, group, choices[name])
    for key, schema in SECTIONS.items():
        if key not in cfg:
            raise ConfigError(f"{key}: section missing from the config; expected the keys of {schema.__name__}")
        out[key] = _check_section(cfg, key, schema)
    for key, typ in TOP_LEVEL.items():
        value = cfg.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
        out[key] = value
    out["mode"] = cfg.get("mode")
    if out["partition"].name == "auto":
        from astroscale_fl.data.tasks import DEFAULT_PARTITION

        chosen = DEFAULT_PARTITION.get(out["task"].name, "iid")
        out["partition"] = OmegaConf.merge(OmegaConf.structured(SCHEMAS["partition"][chosen]),
                                           OmegaConf.load(conf_dir() / "partition" / f"{chosen}.yaml"))
    typed = OmegaConf.create(out)
    _check_missing(typed)
    if typed.federation.num_nodes is None:
        typed.federation.num_nodes = default_num_nodes(typed)
    _check_values(typed)
    OmegaConf.set_readonly(typed, True)
    return typed


DEFAULT_NUM_NODES = 5


def default_num_nodes(cfg: DictConfig, distinct_values: Callable[[str], int] | None = None) -> int | None:
    """The one rule for ``federation.num_nodes: null``: one node per value of the partition
    column (:func:`astroscale_fl.data.split.partition_column`: the task's surveys when it lists them,
    else ``distinct_values(column)`` counted in the data, None while no data is read), else 5.

    :func:`validate` applies it without data; :func:`astroscale_fl.data.nodes.resolve_num_nodes`
    with the training rows.
    """
    from astroscale_fl.data.split import partition_column

    column = partition_column(cfg.partition)
    if column is None:
        return DEFAULT_NUM_NODES
    if cfg.partition.name == "by_survey" and "surveys" in cfg.task:
        return len(cfg.task.surveys)
    return distinct_values(column) if distinct_values is not None else None


def _check_values(cfg: DictConfig) -> None:
    fed, train = cfg.federation, cfg.train
    require(cfg.device in DEVICES or str(cfg.device).startswith("cuda:"), "device", "auto, cpu or cuda", cfg.device)
    require(fed.num_nodes is None or fed.num_nodes >= 1, "federation.num_nodes", "an integer >= 1", fed.num_nodes)
    require(fed.num_rounds >= 1, "federation.num_rounds", "an integer >= 1", fed.num_rounds)
    require(0.0 < fed.fraction_train <= 1.0, "federation.fraction_train", "a number in (0, 1]", fed.fraction_train)
    require(0.0 <= fed.fraction_evaluate <= 1.0, "federation.fraction_evaluate", "a number in [0, 1]", fed.fraction_evaluate)
    require(fed.min_train_nodes >= 1, "federation.min_train_nodes", "an integer >= 1", fed.min_train_nodes)
    require(fed.client_threads >= 1, "federation.client_threads", "an integer >= 1", fed.client_threads)
    require(fed.backend in ("inprocess", "ray"), "federation.backend", "inprocess or ray", fed.backend)
    require(train.local_epochs >= 1, "train.local_epochs", "an integer >= 1", train.local_epochs)
    require(train.batch_size >= 1, "train.batch_size", "an integer >= 1", train.batch_size)
    require(train.lr > 0, "train.lr", "a positive number", train.lr)
    require(train.optimizer in ("sgd", "adam"), "train.optimizer", "sgd or adam", train.optimizer)
    require(cfg.preprocess.clip is None or cfg.preprocess.clip > 0, "preprocess.clip", "a positive number or null", cfg.preprocess.clip)
    require(cfg.preprocess.scaling in ("robust", "standard", "minmax"), "preprocess.scaling", "robust, standard or minmax", cfg.preprocess.scaling)
    _check_preprocess(cfg.preprocess)
    require(cfg.mode in ("federated", "centralized"), "mode", "federated or centralized", cfg.mode)
    strategy = cfg.get("strategy") or {}
    for key in ("server_lr", "local_lr", "tau"):
        if key in strategy:
            require(strategy[key] > 0, f"strategy.{key}", "a positive number", strategy[key])
    if "mu" in strategy:
        require(strategy.mu >= 0, "strategy.mu", "a number >= 0", strategy.mu)
    for key in ("beta1", "beta2"):
        if key in strategy:
            require(0 <= strategy[key] < 1, f"strategy.{key}", "a number in [0, 1)", strategy[key])
    if cfg.partition.name == "dirichlet":
        require(cfg.partition.alpha > 0, "partition.alpha", "a positive number", cfg.partition.alpha)
        require(cfg.partition.bins >= 1, "partition.bins", "an integer >= 1", cfg.partition.bins)
    check_values(cfg)
    SelectionSettings.from_config(fed)
    require(fed.secure_aggregation in ("none", "secaggplus"), "federation.secure_aggregation", "none or secaggplus", fed.secure_aggregation)
    if fed.secure_aggregation == "secaggplus":
        from astroscale_fl.federation.secagg.protocol import check_config

        check_config(cfg)
    if cfg.privacy.name != "none":
        from astroscale_fl.privacy import PrivacySettings
        from astroscale_fl.privacy.node_level import NodeLevelSettings

        PrivacySettings.from_config(cfg.privacy)  # raises a one-line PrivacyError
        NodeLevelSettings.from_config(cfg.privacy)


def _check_preprocess(section) -> None:
    """The issue-14 preprocess keys: choices and ranges (column names are checked against the task later)."""
    require(section.impute in ("median", "mean", "ffill", "bfill", "interpolate"), "preprocess.impute",
             "median, mean, ffill, bfill or interpolate", section.impute)
    require(section.impute in ("median", "mean") or bool(section.order_by), "preprocess.order_by",
             f"a column to order rows by for preprocess.impute={section.impute}", section.order_by)
    require(section.outliers in ("none", "zscore", "iqr", "isolation_forest"), "preprocess.outliers",
             "none, zscore, iqr or isolation_forest", section.outliers)
    require(section.outliers != "isolation_forest" or 0 < section.outlier_threshold < 1, "preprocess.outlier_threshold",
             "an anomaly score in (0, 1) for isolation_forest (e.g. 0.6)", section.outlier_threshold)
    require(section.outliers != "isolation_forest" or section.outlier_action in ("drop", "flag"), "preprocess.outlier_action",
             "drop or flag for isolation_forest (a forest has no bounds to clip to)", section.outlier_action)
    require(section.outliers != "isolation_forest" or section.outlier_action == "drop" or bool(section.get("reference")),
             "preprocess.outlier_action", "drop for isolation_forest without preprocess.reference (each node's own forest "
             "stays on the node; flag needs the forest fitted on the public reference)", section.outlier_action)
    require(section.outlier_action in ("drop", "clip", "flag"), "preprocess.outlier_action", "drop, clip or flag", section.outlier_action)
    require(section.outlier_threshold > 0, "preprocess.outlier_threshold", "a positive number", section.outlier_threshold)
    require(section.polynomial_degree >= 2, "preprocess.polynomial_degree", "an integer >= 2", section.polynomial_degree)
    known = ("distance_pc", "polynomial", "interactions", "temporal")
    require(all(f in known for f in section.features), "preprocess.features", f"some of {list(known)}", list(section.features))
    require(section.chunk_rows is None or section.chunk_rows >= 1, "preprocess.chunk_rows", "a positive integer or null", section.chunk_rows)
    require(section.cache_bytes >= 0, "preprocess.cache_bytes", "a number of bytes >= 0", section.cache_bytes)


def _check_missing(cfg: DictConfig) -> None:
    """Every schema field needs a value: not ``???`` (task.path, partition.column), not absent from the YAML."""
    for group in (g for g in (*SCHEMAS, *SECTIONS) if g in cfg):
        for key in (k for k in cfg[group] if OmegaConf.is_missing(cfg[group], k)):
            choice = f" for {group}={cfg[group].name}" if group in SCHEMAS else ""
            raise ConfigError(f"{group}.{key}: a value is required{choice} (e.g. {group}.{key}=...)")


def to_json(cfg: DictConfig, without: tuple[str, ...] = ()) -> str:
    """The config (less the groups in ``without``) as a compact JSON string."""
    container = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in without}
    return json.dumps(container, sort_keys=True, separators=(",", ":"))


def from_json(text: str, without: tuple[str, ...] = ()) -> DictConfig:
    """Inverse of :func:`to_json`, validated."""
    return validate(OmegaConf.create(json.loads(text)), without=without)
