"""A deployed node's data directory, spelled once: its table (``train.parquet``, or a folder
``train/`` of Parquet files) and its state directory (``.astroscale/``). Light: no pandas, no torch
(the node's commands and status files read it)."""

from __future__ import annotations

from pathlib import Path

NODE_DATA_FILE = "train.parquet"
NODE_DATA_DIR = "train"  # or a folder of Parquet files
STATE_DIR = ".astroscale"  # <data-dir>/.astroscale: what a deployed node keeps across restarts (ledger, status, ...)
DATA_DIR_KEY = "data-dir"  # the node config key that makes a node a deployed one


def deployed_data_dir(node_config: dict) -> str | None:
    """A deployed node's data directory from its node config (``data-dir``), or None for a
    simulated node. Read here and in :func:`astroscale_fl.data.node_data.node_data` only; the
    node's status file uses it before a run config exists."""
    value = node_config.get(DATA_DIR_KEY)
    return str(value) if value else None


def node_state_dir(data_dir: str | Path) -> Path:
    """A deployed node's state directory, ``<data-dir>/.astroscale`` (its privacy ledger, SCAFFOLD
    control variate, message status, launcher file)."""
    return Path(data_dir) / STATE_DIR


def node_table_path(data_dir: str | Path) -> Path:
    """A deployed node's table: the folder ``<data-dir>/train/`` of Parquet files when there is one,
    else ``<data-dir>/train.parquet``."""
    root = Path(data_dir)
    folder = root / NODE_DATA_DIR
    return folder if folder.is_dir() else root / NODE_DATA_FILE
