"""The run's configuration, checked: the schema merge, then each owner's check of its own keys,
then (:func:`astroscale_fl.config_checks.check_run`, once the data is read) the pre-run checks.

:data:`SCHEMAS` holds every group's schemas: the task, model and partition groups' from
:mod:`astroscale_fl.config_schema`, the strategy and privacy groups' from their owners' settings
classes (:mod:`astroscale_fl.federation.strategy_params`, :mod:`astroscale_fl.privacy.settings`).
:func:`validate` is what every entry point calls on a composed config (:func:`astroscale_fl.config.compose`):
it merges the config onto the schemas (:func:`astroscale_fl.config.merge_schemas`), resolves
``partition=auto`` and ``federation.num_nodes: null``, and runs the checks. It returns a typed,
read-only copy; a mistake is a one-line :class:`~astroscale_fl.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from astroscale_fl import config
from astroscale_fl.config import require, schema_of
from astroscale_fl.config_checks import check_values
from astroscale_fl.config_schema import GROUPS
from astroscale_fl.data import split
from astroscale_fl.data.tasks import default_partition
from astroscale_fl.errors import ConfigError, one_line
from astroscale_fl.federation.selection import SelectionSettings
from astroscale_fl.federation.strategy_params import STRATEGY_PARAMS, strategy_params
from astroscale_fl.privacy.settings import PRIVACY_SETTINGS, privacy_settings

DEVICES = ("auto", "cpu", "cuda")
#: every config group: choice name -> schema
SCHEMAS: dict[str, dict[str, type]] = {
    **GROUPS,
    "strategy": {name: schema_of(params) for name, params in STRATEGY_PARAMS.items()},
    "privacy": {name: schema_of(settings) for name, settings in PRIVACY_SETTINGS.items()},
}


def validate(cfg: DictConfig, without: tuple[str, ...] = ()) -> DictConfig:
    """Check a composed config against the schemas; return a typed, read-only copy.

    ``without`` names groups the config leaves out on purpose (the nodes' copy has no
    ``strategy``: see :mod:`astroscale_fl.federation.messages`). Raises :class:`ConfigError`
    (one line) on unknown keys, wrong types or bad values.
    """
    out = config.merge_schemas(cfg, SCHEMAS, without)
    if out["partition"].name == "auto":
        chosen = default_partition(out["task"].name)
        out["partition"] = config.merge_section(OmegaConf.load(config.conf_dir() / "partition" / f"{chosen}.yaml"),
                                                "partition", SCHEMAS["partition"][chosen])
    typed = OmegaConf.create(out)
    config.check_missing(typed, tuple(SCHEMAS))
    if typed.federation.num_nodes is None:
        typed.federation.num_nodes = split.default_num_nodes(typed)
    _check_values(typed)
    OmegaConf.set_readonly(typed, True)
    return typed



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
    require(0 < fed.ray_connect_timeout < float("inf"), "federation.ray_connect_timeout",
            "a positive number of seconds", fed.ray_connect_timeout)
    require(train.local_epochs >= 1, "train.local_epochs", "an integer >= 1", train.local_epochs)
    require(train.batch_size >= 1, "train.batch_size", "an integer >= 1", train.batch_size)
    require(train.lr > 0, "train.lr", "a positive number", train.lr)
    require(train.optimizer in ("sgd", "adam"), "train.optimizer", "sgd or adam", train.optimizer)
    require(cfg.preprocess.clip is None or cfg.preprocess.clip > 0, "preprocess.clip", "a positive number or null", cfg.preprocess.clip)
    require(cfg.preprocess.scaling in ("robust", "standard", "minmax"), "preprocess.scaling", "robust, standard or minmax", cfg.preprocess.scaling)
    _check_preprocess(cfg.preprocess)
    require(cfg.mode in ("federated", "centralized"), "mode", "federated or centralized", cfg.mode)
    if cfg.get("strategy") is not None:  # the nodes' copy has none
        strategy_params(cfg.strategy)
    if cfg.partition.name == "dirichlet":
        require(cfg.partition.alpha > 0, "partition.alpha", "a positive number", cfg.partition.alpha)
        require(cfg.partition.bins >= 1, "partition.bins", "an integer >= 1", cfg.partition.bins)
    check_values(cfg)
    SelectionSettings.from_config(fed)
    require(fed.secure_aggregation in ("none", "secaggplus"), "federation.secure_aggregation", "none or secaggplus", fed.secure_aggregation)
    if fed.secure_aggregation == "secaggplus":
        from astroscale_fl.federation.secagg.scheme import check_config

        check_config(cfg)
    privacy_settings(cfg.privacy)  # raises a one-line PrivacyError


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
    require(section.chunk_rows is None or 1 <= section.chunk_rows <= 100_000_000, "preprocess.chunk_rows",  # a batch is held in memory
            "a number of rows in 1..100000000 or null", section.chunk_rows)
    require(section.cache_bytes >= 0, "preprocess.cache_bytes", "a number of bytes >= 0", section.cache_bytes)



def from_json(text: str, without: tuple[str, ...] = ()) -> DictConfig:
    """Inverse of :func:`astroscale_fl.config.to_json`, validated.

    The text may come from another machine (a node reads the server's run config):
    :func:`~astroscale_fl.config.to_json` writes resolved values only, so an interpolation
    (``${oc.env:SECRET}``), which the reader would resolve against its own environment, is refused
    with the key that holds it."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"run config: not JSON ({one_line(str(exc))})") from None
    _refuse_interpolations(data, "")
    return validate(OmegaConf.create(data), without=without)


def _refuse_interpolations(value: Any, key: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_interpolations(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_interpolations(v, f"{key}[{i}]")
    elif isinstance(value, str) and "${" in value:
        raise ConfigError(f"{key}: {value[:60]!r} holds an interpolation; a run config carries resolved values only")
