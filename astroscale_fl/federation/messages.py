"""What travels in messages besides model arrays: the run config and the fitted pipeline.

The server puts the validated run config (JSON) and, after the statistics round, the fitted
preprocessing state (JSON) into every message's ConfigRecord. ClientApps therefore need no
configuration of their own beyond where their data is (the node config).

The run config travels without its ``strategy`` group: what a strategy asks of the node
reaches it once, typed, in the round config (:class:`~astroscale_fl.federation.protocol.ProximalTerm`,
:class:`~astroscale_fl.federation.protocol.ScaffoldCorrection`), and the server-side parameters
(server_lr, FedAdam's moments) are none of the node's business.

A node reads the run config once per run: :func:`read_run` gives a :class:`NodeRun` (the validated
config, its digests and the typed :class:`LocalSettings`) built once per distinct JSON, and the
handlers carry that object instead of looking values up in the config with each message.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord
from omegaconf import DictConfig

from astroscale_fl import config as config_mod
from astroscale_fl import run_config
from astroscale_fl.federation.protocol import PIPELINE_KEY, RUN_CONFIG_KEY
from astroscale_fl.learning.device import resolve_device
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy.settings import DpSgdSettings, dp_sgd_settings

NODE_CONFIG_OMITS = ("strategy",)  # config groups the nodes' copy of the run config leaves out


def round_config(cfg: DictConfig, pipeline: Pipeline | None = None) -> ConfigRecord:
    """The ConfigRecord sent with each message of a run."""
    record = ConfigRecord({RUN_CONFIG_KEY: config_mod.to_json(cfg, without=NODE_CONFIG_OMITS)})
    if pipeline is not None:
        record[PIPELINE_KEY] = json.dumps(pipeline.state_dict(), sort_keys=True)
    return record


@dataclass(frozen=True)
class LocalSettings:
    """The run-config values every message's handling reads, typed (an OmegaConf attribute costs
    ~30 µs, and a message reads a dozen)."""

    seed: int
    batch_size: int
    local_epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    threads: int
    device: torch.device
    privacy: DpSgdSettings | None
    cuda_graph: bool  # train.cuda_graph
    vectorize: bool  # federation.vectorize: train the round's nodes together where they share a model

    @classmethod
    def from_config(cls, cfg: DictConfig) -> LocalSettings:
        """The settings of a validated run config."""
        train = cfg.train
        return cls(int(cfg.seed), int(train.batch_size), int(train.local_epochs), str(train.optimizer), float(train.lr),
                   float(train.momentum), float(train.weight_decay), int(cfg.federation.client_threads),
                   resolve_device(cfg.device), dp_sgd_settings(cfg.privacy), bool(train.cuda_graph),
                   bool(cfg.federation.vectorize))


@dataclass(frozen=True, eq=False)
class NodeRun:
    """A run as its nodes read it, built once per run (per distinct run-config JSON) and carried by
    the handlers: the validated config, its digests (cache keys), and its :class:`LocalSettings`."""

    cfg: DictConfig
    digest: str  # of the whole run config
    model_digest: str  # of its model section: the architecture

    @functools.cached_property
    def settings(self) -> LocalSettings:
        """The typed values the handlers read (built on first use: the statistics round needs none)."""
        return LocalSettings.from_config(self.cfg)


def read_run(record: ConfigRecord) -> NodeRun:
    """The run a message belongs to: its validated run config, parsed and validated once per distinct JSON."""
    return _parse_run(str(record[RUN_CONFIG_KEY]))


def read_run_config(record: ConfigRecord) -> DictConfig:
    """The validated run config carried by a message (:attr:`NodeRun.cfg` of :func:`read_run`)."""
    return read_run(record).cfg


def read_pipeline(record: ConfigRecord) -> tuple[Pipeline, str]:
    """The fitted pipeline carried by a message, and its JSON (a cache key); built once per JSON."""
    text = str(record[PIPELINE_KEY])
    return _parse_pipeline(text), text


def config_digest(cfg: DictConfig, sections: tuple[str, ...] | None = None) -> str:
    """A digest of the run config (or of some of its top-level ``sections``): a cache key for what
    nodes derive from it (``str`` of an OmegaConf node costs ~1 ms a message)."""
    return _digest(config_mod.to_json(cfg, sections))


# Every message of a run carries the same JSON: validating it costs ~19 ms, far more than a
# node's step, so the result (read-only) is kept per process.
@functools.lru_cache(maxsize=8)
def _parse_run(text: str) -> NodeRun:
    cfg = run_config.from_json(text, without=NODE_CONFIG_OMITS)
    return NodeRun(cfg, config_digest(cfg), config_digest(cfg, ("model",)))


@functools.lru_cache(maxsize=8)
def _parse_pipeline(text: str) -> Pipeline:
    return Pipeline.from_state(json.loads(text))


@functools.lru_cache(maxsize=64)
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
