"""Local training and evaluation loops.

Batches are formed by slicing tensors that already live on the training device with a
seeded random permutation: no per-sample ``DataLoader`` on the hot path (on 2 CPU threads
that is ~10x faster for the models here). Strategies plug in through one hook,
``after_backward(model)``, which edits gradients before the optimizer step (FedProx' proximal
gradient, SCAFFOLD's correction: :mod:`astroscale_fl.federation.local_objectives`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from astroscale_fl.errors import ConfigError
from astroscale_fl.learning.cuda_graphs import train_local_graphed
from astroscale_fl.learning.metrics import r2_score, rmse
from astroscale_fl.learning.steps import GradHook, TrainReport, batch_loss, device_of


def make_optimizer(params, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The local optimizer named in ``train.optimizer``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"train.optimizer: expected 'sgd' or 'adam', got {name!r}")


def shuffled_batches(num_rows: int, batch_size: int, epochs: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index tensors of a seeded random permutation per epoch, cut into ``batch_size`` slices."""
    for _ in range(epochs):
        order = torch.randperm(num_rows, generator=generator)
        yield from torch.split(order, batch_size)


def train_local(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    features: torch.Tensor,
    target: torch.Tensor,
    batches: Iterator[torch.Tensor],
    after_backward: GradHook | None = None,
    cuda_graph: bool = False,
) -> TrainReport:
    """Minimise the mean squared error over ``batches`` (index tensors into the rows).

    ``cuda_graph`` (``train.cuda_graph``): with rows on a CUDA device, replay the step from a
    CUDA graph (:mod:`astroscale_fl.learning.cuda_graphs`); ignored on CPU.
    """
    if cuda_graph and features.is_cuda:
        return train_local_graphed(model, optimizer, features, target, batches, after_backward)
    model.train()
    device = features.device  # indices go where the rows are; a CUDA model's batches are staged (batch_loss)
    total, steps = torch.zeros((), device=device_of(model)), 0
    for index in batches:
        index = index.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, features, target, index)
        total += loss.detach()
        loss.backward()
        if after_backward is not None:
            after_backward(model)
        optimizer.step()
        steps += 1
    return TrainReport(loss=float(total) / max(steps, 1), steps=steps, examples=int(features.shape[0]))


def encode_rows(pipeline, frame, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, standardised target) of ``frame``'s rows as tensors on ``device``."""
    return (torch.from_numpy(pipeline.transform_features(frame)).to(device),
            torch.from_numpy(pipeline.transform_target(frame)).to(device))


@torch.no_grad()
def predict(model: nn.Module, features: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    """Model outputs for every row, in chunks, as float64 numpy."""
    model.eval()
    device = device_of(model)  # host-resident (memory-mapped) rows: each contiguous chunk is copied over
    outs = [model(features[i : i + chunk].to(device)).double().cpu() for i in range(0, features.shape[0], chunk)]
    return torch.cat(outs).numpy() if outs else np.zeros(0)


@dataclass
class EvalReport:
    """Evaluation of a model on labelled rows: loss in standardised units, RMSE and R² in target units."""

    loss: float
    rmse: float
    r2: float
    examples: int


def evaluate(model: nn.Module, features: torch.Tensor, target: torch.Tensor, inverse_target: Callable[[np.ndarray], np.ndarray]) -> EvalReport:
    """MSE loss (standardised target) and RMSE / R² in the target's units."""
    return eval_report(predict(model, features), target.double().cpu().numpy(), inverse_target)


def eval_report(scaled_pred: np.ndarray, scaled_true: np.ndarray, inverse_target: Callable[[np.ndarray], np.ndarray]) -> EvalReport:
    """:func:`evaluate` of predictions already made (both in standardised units, float64)."""
    loss = float(np.mean((scaled_pred - scaled_true) ** 2)) if len(scaled_true) else float("nan")
    y_true, y_pred = inverse_target(scaled_true), inverse_target(scaled_pred)
    return EvalReport(loss=loss, rmse=rmse(y_true, y_pred), r2=r2_score(y_true, y_pred), examples=len(y_true))
