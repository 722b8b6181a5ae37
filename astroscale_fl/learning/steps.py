"""The pieces of one local training step that the eager loop (:mod:`astroscale_fl.learning.training`),
the CUDA-graph loop (:mod:`astroscale_fl.learning.cuda_graphs`) and DP-SGD share: the gradient hook
type, the training report, the batch stager and the batch loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

GradHook = Callable[[nn.Module], None]


@dataclass
class TrainReport:
    """What one call of :func:`train_local` did."""

    loss: float  # mean training loss over the steps (standardised target units)
    steps: int
    examples: int  # rows the node holds



class BatchStager:
    """Batches of host-resident rows (e.g. memory-mapped tensor files) for a model on a CUDA device.

    The batch's rows are gathered (``index_select``) into a page-locked staging buffer and copied
    to the device with ``non_blocking=True``, so the copy overlaps the previous step's kernels.
    Two buffers alternate; before one is refilled, the copy that last read it is waited for (a CUDA
    event), so a batch is never overwritten while in flight. Rows already on the model's device
    (the CPU case) are indexed directly: nothing changes there.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._buffers: dict[tuple, list] = {}  # (dtype, row shape) -> [[pinned buffer, event], ...]
        self._turn = 0

    def __call__(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if rows.device == self.device:
            return rows[index]
        key = (rows.dtype, tuple(rows.shape[1:]))
        slots = self._buffers.setdefault(key, [[None, None], [None, None]])
        slot = slots[self._turn % 2]
        if slot[1] is not None:
            slot[1].synchronize()  # the copy that last read this buffer is done
        if slot[0] is None or slot[0].shape[0] < len(index):
            slot[0] = torch.empty((len(index), *rows.shape[1:]), dtype=rows.dtype, pin_memory=self.device.type == "cuda")
        staged = slot[0][: len(index)]
        torch.index_select(rows, 0, index, out=staged)
        on_device = staged.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            slot[1] = torch.cuda.Event()
            slot[1].record()
        return on_device

    def pair(self, features: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, target) of the rows ``index`` on the model's device (one buffer turn for both)."""
        x, y = self(features, index), self(target, index)
        self._turn += 1
        return x, y



def device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))



@functools.lru_cache(maxsize=4)
def _stager(device: torch.device) -> BatchStager:
    return BatchStager(device)



def batch_loss(model: nn.Module, features: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the rows ``index`` (an empty batch gives a zero loss with a graph).

    Rows on the host with the model on a CUDA device (memory-mapped tensor files) go through a
    :class:`BatchStager` (pinned buffer, non-blocking copy); otherwise they are indexed in place."""
    device = device_of(model)
    if features.device == device:
        x, y = features[index], target[index]
    else:
        x, y = _stager(device).pair(features, target, index.to(features.device))
    prediction = model(x)
    return nn.functional.mse_loss(prediction, y) if len(index) else prediction.sum() * 0.0
