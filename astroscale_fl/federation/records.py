"""Conversions between torch/numpy state and Flower records, and message sizes."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import nn


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord (numpy copies on the CPU)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items()})


def arrays_to_numpy(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """An ArrayRecord as an ordered dict of numpy arrays."""
    return OrderedDict((k, v.numpy()) for k, v in record.items())


def numpy_to_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays (kept in order) as an ArrayRecord."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def load_arrays(model: nn.Module, record: ArrayRecord) -> None:
    """Copy an ArrayRecord's values into the model's parameters and buffers (in place)."""
    state = OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in arrays_to_numpy(record).items())
    model.load_state_dict(state, strict=True)


def record_nbytes(content: RecordDict) -> int:
    """Bytes of array payload in a message's content (what dominates the traffic)."""
    return int(sum(len(a.data) for rec in content.array_records.values() for a in rec.values()))
