"""What travels in messages besides model arrays: the run config and the fitted pipeline.

The server puts the validated run config (JSON) and, after the statistics round, the fitted
preprocessing state (JSON) into every message's ConfigRecord. ClientApps therefore need no
configuration of their own beyond where their data is (the node config).

The run config travels without its ``strategy`` group: what a strategy asks of the node
reaches it once, typed, in the round config (:class:`~astroscale_fl.federation.protocol.ProximalTerm`,
:class:`~astroscale_fl.federation.protocol.ScaffoldCorrection`), and the server-side parameters
(server_lr, FedAdam's moments) are none of the node's business.
"""

from __future__ import annotations

import functools
import hashlib
import json

from flwr.app import ConfigRecord
from omegaconf import DictConfig

from astroscale_fl import config as config_mod
from astroscale_fl import run_config
from astroscale_fl.federation.protocol import PIPELINE_KEY, RUN_CONFIG_KEY
from astroscale_fl.preprocessing import Pipeline

NODE_CONFIG_OMITS = ("strategy",)  # config groups the nodes' copy of the run config leaves out


def round_config(cfg: DictConfig, pipeline: Pipeline | None = None) -> ConfigRecord:
    """The ConfigRecord sent with each message of a run."""
    record = ConfigRecord({RUN_CONFIG_KEY: config_mod.to_json(cfg, without=NODE_CONFIG_OMITS)})
    if pipeline is not None:
        record[PIPELINE_KEY] = json.dumps(pipeline.state_dict(), sort_keys=True)
    return record


def read_run_config(record: ConfigRecord) -> DictConfig:
    """The validated run config carried by a message (parsed and validated once per distinct JSON)."""
    return _parse_run_config(str(record[RUN_CONFIG_KEY]))


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
def _parse_run_config(text: str) -> DictConfig:
    return run_config.from_json(text, without=NODE_CONFIG_OMITS)


@functools.lru_cache(maxsize=8)
def _parse_pipeline(text: str) -> Pipeline:
    return Pipeline.from_state(json.loads(text))


@functools.lru_cache(maxsize=64)
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
