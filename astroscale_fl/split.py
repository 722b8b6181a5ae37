"""Hold out the test rows, then split the training rows among federation nodes.

Both steps are deterministic for a seed. The held-out test rows are never given to a node;
the server evaluates the global model on them after every round.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from astroscale_fl.errors import ConfigError, DataError


def train_test_split(frame: pd.DataFrame, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows at random into (train, test) with ``test_fraction`` of them held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"task.test_fraction: expected a number in (0, 1), got {test_fraction}")
    rng = np.random.default_rng([seed, 0x7E57])
    is_test = rng.random(len(frame)) < test_fraction
    return frame.loc[~is_test].reset_index(drop=True), frame.loc[is_test].reset_index(drop=True)


def assign_iid(frame: pd.DataFrame, num_nodes: int, seed: int) -> np.ndarray:
    """Node index per row: a seeded random permutation dealt out in equal shares."""
    rng = np.random.default_rng([seed, 0x11D])
    nodes = np.empty(len(frame), dtype=np.int64)
    nodes[rng.permutation(len(frame))] = np.arange(len(frame)) % num_nodes
    return nodes


def assign_sky(frame: pd.DataFrame, num_nodes: int, seed: int, dec_column: str = "DErad") -> np.ndarray:
    """Node index per row: disjoint declination bands of equal sky area, as survey footprints.

    Bands are equal in ``sin(dec)``, so each node owns the same solid angle (and the node
    sizes differ as the stars' distribution on the sky does).
    """
    del seed  # the footprint split is geometric
    if dec_column not in frame:
        raise ConfigError(f"partition=sky needs a declination column {dec_column!r} in the task's inputs")
    sin_dec = np.sin(frame[dec_column].to_numpy())
    edges = np.linspace(-1.0, 1.0, num_nodes + 1)
    return np.clip(np.searchsorted(edges, sin_dec, side="right") - 1, 0, num_nodes - 1)


PARTITIONERS = {"iid": assign_iid, "sky": assign_sky}


def assign_nodes(frame: pd.DataFrame, partition_cfg, num_nodes: int, seed: int) -> np.ndarray:
    """Node index (0..num_nodes-1) for every row of ``frame``, by the configured partition."""
    name = partition_cfg.name
    if name not in PARTITIONERS:
        raise ConfigError(f"partition: unknown partition {name!r}; expected one of {sorted(PARTITIONERS)}")
    kwargs = {k: v for k, v in dict(partition_cfg).items() if k != "name"}
    nodes = PARTITIONERS[name](frame, num_nodes, seed, **kwargs)
    counts = np.bincount(nodes, minlength=num_nodes)
    if (counts == 0).any():
        empty = [int(i) for i in np.flatnonzero(counts == 0)]
        raise DataError(
            f"partition={name}: node(s) {empty} would get no rows ({len(frame)} training rows for "
            f"federation.num_nodes={num_nodes}); use fewer nodes or more data"
        )
    return nodes


def node_rows(frame: pd.DataFrame, partition_cfg, num_nodes: int, node: int, seed: int) -> pd.DataFrame:
    """The training rows that node ``node`` owns."""
    nodes = assign_nodes(frame, partition_cfg, num_nodes, seed)
    return frame.loc[nodes == node].reset_index(drop=True)
