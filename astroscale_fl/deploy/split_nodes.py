"""The catalog split into node data directories for a deployment (behind ``astroscale-fl node-data``).

``write_node_dirs(cfg, root, n)`` writes ``root/node-<i>/train.parquet`` (i = 1..n): node i's
share of the configured task's training split (``partition_frame(cfg, i - 1, n)``, so the
same task / partition / seed as a simulation with n nodes), plus ``node.json`` describing it.
Each SuperNode is then started with ``--node-config "data-dir=root/node-<i> source=..."`` and
its ClientApp reads only that directory. Real archives write their own ``train.parquet``
(columns ``id``, the task's raw inputs and its target).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from astroscale_fl.atomic import atomic_path, write_text
from astroscale_fl.data.node_dirs import NODE_DATA_FILE
from astroscale_fl.data.nodes import partition_frame
from astroscale_fl.data.tasks import get_task

NODE_META_FILE = "node.json"


def node_dir(root: str | Path, index: int) -> Path:
    """``root/node-<index>`` (1-based)."""
    return Path(root) / f"node-{index}"


def write_node_dirs(cfg: DictConfig, root: str | Path, num_nodes: int) -> list[Path]:
    """Write ``num_nodes`` node data directories under ``root``; return them in order."""
    task = get_task(cfg.task)  # dynamic tasks (catalog) need their config
    columns = ["id", *task.input_names, task.target]
    out = []
    for i in range(1, num_nodes + 1):
        frame = partition_frame(cfg, i - 1, num_nodes)
        frame = frame[[c for c in columns if c in frame.columns]].reset_index(drop=True)
        directory = node_dir(root, i)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / NODE_DATA_FILE) as tmp:
            frame.to_parquet(tmp, index=False)
        meta = {
            "source": source_name(cfg), "task": cfg.task.name, "partition": cfg.partition.name, "seed": int(cfg.seed),
            "node": i, "num_nodes": num_nodes, "rows": len(frame),
        }
        write_text(directory / NODE_META_FILE, json.dumps(meta, indent=2) + "\n")
        out.append(directory)
    return out


def source_name(cfg: DictConfig) -> str:
    """A short name for where the rows come from (for ``--node-config source=...``)."""
    return str(cfg.task.name).split("_")[0]
