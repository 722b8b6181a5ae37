"""Local training steps replayed from a CUDA graph (``train.cuda_graph``).

On a GPU the default MLP's step is launch-bound: ~40 small kernels, each a few microseconds
of work behind ~1.4 ms of Python and launch overhead per step at batch 1024. Capturing the
whole step - batch gather from a static index buffer, forward, backward, the strategy hooks,
the optimizer step - in one CUDA graph and replaying it removes that overhead; the host
never waits for the device between steps.

The step reads its batch through a device-side step counter into a device buffer holding
every full-size batch of the run (one host-to-device copy), so a replay needs no new inputs.
Batches of another size (the last, partial batch of an epoch) run eagerly, in their place in
the order, on the same parameters and optimizer state. Optimizers must be graph-safe: Adam
is switched to ``capturable=True`` (its step count lives on the device), SGD is as it is.
The first full steps run eagerly on a side stream: they are real steps and the warm-up that
capturing needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from astroscale_fl.learning.steps import GradHook, TrainReport, batch_loss

#: Eager steps before the graph is captured (they train; the graph replays the rest).
WARMUP_STEPS = 3


class GraphedStep:
    """Runs a step function as a CUDA graph: the first ``warmup`` calls eagerly on a side stream,
    then one capture (not executed), then replays. ``step`` must read its inputs from static
    device tensors and advance its own device counter."""

    def __init__(self, step: Callable[[], None], device: torch.device, warmup: int = WARMUP_STEPS):
        self.step, self.device, self.warmup = step, device, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0

    def run(self, count: int) -> None:
        """Take ``count`` steps (eagerly off CUDA)."""
        if self.device.type != "cuda":
            for _ in range(count):
                self.step()
            return
        while count > 0 and self.eager_steps < self.warmup:
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self.step()
            current.wait_stream(side)
            self.eager_steps += 1
            count -= 1
        if count > 0 and self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step()
        for _ in range(count):
            self.graph.replay()


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch a fresh Adam to ``capturable=True``; refuse optimizers not known to be graph-safe."""
    if isinstance(optimizer, torch.optim.Adam):
        if optimizer.state:
            raise ValueError("train.cuda_graph: the optimizer already has state; pass a fresh one")
        for group in optimizer.param_groups:
            group["capturable"] = True
    elif not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(f"train.cuda_graph: {type(optimizer).__name__} is not supported (adam or sgd)")


def train_local_graphed(model: nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor, target: torch.Tensor,
                        batches: Iterable[torch.Tensor], after_backward: GradHook | None = None) -> TrainReport:
    """:func:`astroscale_fl.learning.training.train_local` with full-size steps replayed from a CUDA graph.

    Same steps, same order, same result as the eager loop (to float rounding: capturable Adam
    computes its bias corrections on the device). Off CUDA the same bookkeeping runs eagerly.
    """
    device = features.device
    host = list(batches)
    order = list(torch.cat(host).to(device).split([len(b) for b in host])) if host else []  # one copy to the device
    width = max((len(b) for b in order), default=0)
    full = [b for b in order if len(b) == width and width > 0]
    if device.type == "cuda":
        make_capturable(optimizer)
    model.train()
    total = torch.zeros((), device=device)
    counter = torch.zeros(1, dtype=torch.long, device=device)
    buffer = torch.stack(full) if full else torch.zeros((0, 1), dtype=torch.long, device=device)

    def step(index: torch.Tensor | None = None) -> None:
        if index is None:  # a full-size batch: read it from the static buffer
            index = buffer.index_select(0, counter).squeeze(0)
            counter.add_(1)
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, features, target, index)
        total.add_(loss.detach())
        loss.backward()
        if after_backward is not None:
            after_backward(model)
        optimizer.step()

    graphed = GraphedStep(step, device)
    position = 0  # runs of consecutive full batches are replayed; other batches run eagerly in their place
    while position < len(order):
        if len(order[position]) != width:
            step(order[position])
            position += 1
            continue
        run = position
        while run < len(order) and len(order[run]) == width:
            run += 1
        graphed.run(run - position)
        position = run
    return TrainReport(loss=float(total) / max(len(order), 1), steps=len(order), examples=int(features.shape[0]))
