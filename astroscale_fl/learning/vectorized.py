"""Vectorised local training: the nodes of a round train together as one stacked model.

Every parameter gets a leading node axis ``K``; one step trains all nodes at once on a
``(K, B, features)`` batch gathered from the nodes' own rows. Each node keeps what it would
have alone: its rows, its batch order (the index tensors the caller drew for it), its
optimizer state (Adam moments, step count / SGD momentum, stacked), its FedProx anchor,
its SCAFFOLD correction ``c - c_i`` and, with DP-SGD, its own per-sample clipping, noise and
expected batch size. Results equal training the nodes one by one with
:func:`astroscale_fl.learning.training.train_local` / :func:`astroscale_fl.privacy.dp_sgd.train_local_dp`
(to float rounding; tested).

Uneven nodes: batches are padded to the largest batch of the run (a row mask), and a node
that has run out of batches takes masked steps that change nothing (not its weights, not
its optimizer state). The cost is ``K x max steps x max batch`` rows of compute.

Forward pass: the MLP / linear models are evaluated as batched matmuls
(``baddbmm``, one kernel per layer for all nodes), which is what DP's per-sample norms need
(each layer's input and output gradient) and measured faster than the equivalent
``torch.func.vmap(functional_call(model, ...))``, also available as ``forward="vmap"``
for plain training (``scripts/bench_gpu.py`` prints both).

CUDA graphs: every step reads its batch from static device buffers (row indices, row mask,
active flags, one device step counter), so the whole step - gather, forward, backward,
clip + noise, optimizer update - is captured once in a CUDA graph and replayed, with no
host synchronisation per step (``cuda_graph=True``; ignored on CPU). The first steps run
eagerly on a side stream (they are real training steps, the warm-up the capture needs).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from astroscale_fl.errors import ConfigError
from astroscale_fl.learning.cuda_graphs import GraphedStep
from astroscale_fl.learning.models import ACTIVATIONS, MLP, Linear
from astroscale_fl.learning.stacked_optim import StackedOptimizer
from astroscale_fl.learning.steps import TrainReport


@dataclass(frozen=True)
class LocalOptimizer:
    """The nodes' local optimizer, as ``train.optimizer`` / ``train.lr`` / ... configure it."""

    name: str  # "adam" | "sgd"
    lr: float
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # adam only (torch's defaults)
    eps: float = 1e-8


@dataclass(frozen=True)
class StackedDP:
    """DP-SGD for every node: clip each row's gradient to ``max_grad_norm`` C, add N(0, (σ_k C)²), divide
    by the node's expected batch size. ``noise_seed=None`` seeds the noise from OS randomness."""

    noise_multipliers: tuple[float, ...]  # one per node (each node calibrates its own σ)
    max_grad_norm: float
    expected_batch_sizes: tuple[float, ...]  # one per node: sample rate x the node's rows
    noise_seed: int | None = None


@dataclass
class NodeWork:
    """One node's share of a vectorised round."""

    features: torch.Tensor  # (rows, features) on the training device
    target: torch.Tensor  # (rows,)
    batches: Sequence[torch.Tensor]  # index tensors into the node's rows, in training order
    correction: dict[str, torch.Tensor] | None = None  # SCAFFOLD c - c_i per parameter name


#: The function each activation module of ``models.ACTIVATIONS`` applies.
ACTIVATIONS_FN = {nn.ReLU: torch.relu, nn.GELU: nn.functional.gelu, nn.SiLU: nn.functional.silu, nn.Tanh: torch.tanh}


def layer_plan(model: nn.Module) -> list[tuple[nn.Linear, type | None]]:
    """``[(linear layer, activation class after it or None), ...]`` of a stackable model.

    Stackable: our :class:`~astroscale_fl.learning.models.MLP` without dropout and
    :class:`~astroscale_fl.learning.models.Linear` (every layer with a bias). Raises ``ConfigError`` otherwise.
    """
    if isinstance(model, Linear):
        return [(model.linear, None)]
    if not isinstance(model, MLP):
        raise ConfigError(f"federation.vectorize: only the mlp and linear models can be vectorised, got {type(model).__name__}")
    plan: list[tuple[nn.Linear, type | None]] = []
    for module in model:
        if isinstance(module, nn.Linear) and module.bias is not None:
            plan.append((module, None))
        elif type(module) in ACTIVATIONS.values() and plan and plan[-1][1] is None:
            plan[-1] = (plan[-1][0], type(module))
        else:
            raise ConfigError(f"federation.vectorize: cannot vectorise a model with {type(module).__name__} (dropout > 0?)")
    return plan


def stackable(model: nn.Module) -> bool:
    """Whether :func:`train_stacked` can train ``model``."""
    try:
        layer_plan(model)
    except ConfigError:
        return False
    return True


class StackedBatches:
    """Every node's batches as static device buffers: ``index`` (steps, K, B) row numbers into the
    concatenated rows, ``mask`` (steps, K, B) 1 for real rows, ``count`` (steps, K) rows per batch,
    ``active`` (steps, K) whether the node takes that step."""

    def __init__(self, nodes: Sequence[NodeWork], device: torch.device):
        self.rows = sizes = [int(node.target.shape[0]) for node in nodes]
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
        self.steps = [len(node.batches) for node in nodes]
        num_steps = max(self.steps, default=0)
        width = max((len(b) for node in nodes for b in node.batches), default=0)
        index = torch.full((len(nodes), num_steps, max(width, 1)), -1, dtype=torch.long)
        for k, node in enumerate(nodes):
            if node.batches:
                padded = pad_sequence([b.to("cpu", torch.long) for b in node.batches], batch_first=True, padding_value=-1)
                index[k, : padded.shape[0], : padded.shape[1]] = padded
        real = index >= 0
        index = torch.where(real, index + offsets[:, None, None], 0)
        self.index = index.transpose(0, 1).contiguous().to(device)
        self.mask = real.transpose(0, 1).contiguous().to(device, torch.float32)
        self.count = self.mask.sum(2)
        self.active = (torch.arange(num_steps)[:, None] < torch.tensor(self.steps)[None, :]).to(device)
        self.num_steps = num_steps


def stack_parameters(model: nn.Module, num_nodes: int) -> dict[str, torch.Tensor]:
    """Each parameter of ``model`` repeated along a new leading node axis (leaf tensors needing grad)."""
    return {name: p.detach().unsqueeze(0).repeat(num_nodes, *([1] * p.dim())).requires_grad_(True)
            for name, p in model.named_parameters()}


class StackedTrainer:
    """Trains K copies of ``model`` at once; see the module docstring. Use :func:`train_stacked`."""

    def __init__(self, model: nn.Module, nodes: Sequence[NodeWork], optimizer: LocalOptimizer, *,
                 proximal_mu: float = 0.0, dp: StackedDP | None = None, forward: str = "bmm"):
        if not nodes:
            raise ValueError("train_stacked needs at least one node")
        if forward not in ("bmm", "vmap"):
            raise ConfigError(f"forward: expected 'bmm' or 'vmap', got {forward!r}")
        if dp is not None and forward != "bmm":
            raise ConfigError("DP-SGD needs the bmm forward (per-layer inputs and output gradients)")
        if dp is not None and not len(dp.expected_batch_sizes) == len(dp.noise_multipliers) == len(nodes):
            raise ValueError(f"DP-SGD: expected one expected batch size and one noise multiplier per node ({len(nodes)})")
        self.model, self.plan, self.dp, self.forward_kind = model, layer_plan(model), dp, forward
        self.device = nodes[0].features.device
        self.num_nodes = len(nodes)
        self.features = torch.cat([node.features for node in nodes])
        self.target = torch.cat([node.target for node in nodes]).to(self.features.dtype)
        if not len(self.target):  # no rows at all: padding indices need one (masked) row to point at
            self.features = self.features.new_zeros((1, self.features.shape[1]))
            self.target = self.target.new_zeros(1)
        self.batches = StackedBatches(nodes, self.device)
        self.rows = self.batches.rows
        self.params = stack_parameters(model, self.num_nodes)
        names = list(self.params)
        # parameter names of each linear layer, in plan order
        param_names = {id(p): name for name, p in model.named_parameters()}
        self.layer_names = [(param_names[id(layer.weight)], param_names[id(layer.bias)]) for layer, _ in self.plan]
        anchors = {n: p.detach().clone() for n, p in model.named_parameters()} if proximal_mu else None
        corrections = None
        if any(node.correction is not None for node in nodes):
            corrections = {n: torch.stack([(node.correction or {}).get(n, torch.zeros_like(self.params[n][0])).to(self.device, self.params[n].dtype)
                                           for node in nodes]) for n in names}
        self.optimizer = StackedOptimizer(self.params, optimizer, proximal_mu=proximal_mu, anchors=anchors, corrections=corrections)
        self.counter = torch.zeros(1, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros(self.num_nodes, device=self.device)
        if dp is not None:
            self.inverse_ebs = torch.tensor([1.0 / e for e in dp.expected_batch_sizes], device=self.device)
            self.noise_std = torch.tensor([float(s) * float(dp.max_grad_norm) for s in dp.noise_multipliers], device=self.device)
            self.noisy = any(float(s) > 0 for s in dp.noise_multipliers)

    # ---- one step, reading everything from device buffers (graph-capturable) --------------
    def _batch(self):
        b = self.batches
        index = b.index.index_select(0, self.counter).squeeze(0)
        mask = b.mask.index_select(0, self.counter).squeeze(0)
        count = b.count.index_select(0, self.counter).squeeze(0)
        active = b.active.index_select(0, self.counter).squeeze(0)
        return self.features[index], self.target[index], mask, count, active

    def _forward(self, x: torch.Tensor):
        """Outputs (K, B), each linear layer's inputs and its outputs (bmm forward; empty lists for vmap)."""
        if self.forward_kind == "vmap":
            return torch.func.vmap(lambda p, xs: torch.func.functional_call(self.model, p, (xs,)))(self.params, x), [], []
        inputs, outputs = [], []
        h = x
        for (layer, act), (w_name, b_name) in zip(self.plan, self.layer_names, strict=True):
            inputs.append(h)
            h = torch.baddbmm(self.params[b_name].unsqueeze(1), h, self.params[w_name].transpose(1, 2))
            outputs.append(h)
            if act is not None:
                h = ACTIVATIONS_FN[act](h)
        return h.squeeze(-1), inputs, outputs

    def step(self) -> None:
        """One training step of every active node; advances the device step counter."""
        x, y, mask, count, active = self._batch()
        if self.dp is None:
            prediction, _, _ = self._forward(x)
            per_node = ((prediction - y).square() * mask).sum(1) / count.clamp(min=1.0)
            grads = torch.autograd.grad(per_node.sum(), list(self.params.values()))
            grads = dict(zip(self.params, grads, strict=True))
        else:
            prediction, inputs, outputs = self._forward(x)
            squared = (prediction - y).square() * mask
            per_node = squared.sum(1) / count.clamp(min=1.0)
            backprops = torch.autograd.grad(squared.sum(), outputs)
            grads = self._private_gradient(inputs, backprops)
        with torch.no_grad():
            self.loss_sum.add_(per_node.detach() * active)
            self.optimizer.step(grads, active)
            self.counter.add_(1)

    def _private_gradient(self, inputs, backprops) -> dict[str, torch.Tensor]:
        """Per-node clipped sum of per-sample gradients + noise, over the expected batch size (ghost norms)."""
        with torch.no_grad():
            squared = None
            for a, e in zip(inputs, backprops, strict=True):
                term = e.square().sum(2) * (a.square().sum(2) + 1.0)
                squared = term if squared is None else squared + term
            clip = (self.dp.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0).unsqueeze(2)
            grads = {}
            for a, e, (w_name, b_name) in zip(inputs, backprops, self.layer_names, strict=True):
                clipped = e * clip
                grads[w_name] = torch.bmm(clipped.transpose(1, 2), a)
                grads[b_name] = clipped.sum(1)
            for name, g in grads.items():
                per_node = [-1, *([1] * (g.dim() - 1))]
                if self.noisy:
                    g.add_(torch.randn_like(g) * self.noise_std.view(per_node))
                g.mul_(self.inverse_ebs.view(per_node))
        return grads

    # ---- the loop ------------------------------------------------------------------------
    def run(self, cuda_graph: bool = False) -> None:
        """Train every node through all its batches (replaying a CUDA graph when asked and on CUDA)."""
        total = self.batches.num_steps
        seed = None
        if self.dp is not None and self.noisy:
            seed = secrets.randbits(63) if self.dp.noise_seed is None else int(self.dp.noise_seed)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            if cuda_graph:
                GraphedStep(self.step, self.device).run(total)
            else:
                for _ in range(total):
                    self.step()

    def results(self, on_host: bool = False) -> list[tuple[dict[str, torch.Tensor], TrainReport]]:
        """Per node: its trained parameters (by name, detached; views of one copy of the stacked
        parameters, on the CPU when ``on_host``) and a :class:`TrainReport`."""
        losses = self.loss_sum.cpu().tolist()
        stacked = {name: p.detach().to("cpu" if on_host else p.device, copy=True) for name, p in self.params.items()}
        out = []
        for k, steps in enumerate(self.batches.steps):
            params = {name: p[k] for name, p in stacked.items()}
            out.append((params, TrainReport(loss=losses[k] / max(steps, 1), steps=steps, examples=self.rows[k])))
        return out


def train_stacked(model: nn.Module, nodes: Sequence[NodeWork], optimizer: LocalOptimizer, *, proximal_mu: float = 0.0,
                  dp: StackedDP | None = None, cuda_graph: bool = False, forward: str = "bmm",
                  on_host: bool = False) -> list[tuple[dict[str, torch.Tensor], TrainReport]]:
    """Train one copy of ``model`` per node, all at once; ``model`` itself is not modified.

    Returns, per node in order, its trained parameters (name -> tensor) and its
    :class:`~astroscale_fl.learning.steps.TrainReport` (mean batch loss over its steps, steps, rows).
    ``proximal_mu`` adds FedProx' ``mu (w - w_global)`` (``w_global`` = ``model``'s weights);
    ``NodeWork.correction`` adds SCAFFOLD's ``c - c_i``; ``dp`` turns on per-node DP-SGD
    (both terms then act on the noised gradient, as in ``train_local_dp``). ``on_host``: return
    the parameters on the CPU (one copy for all nodes, e.g. to build replies).
    """
    trainer = StackedTrainer(model, nodes, optimizer, proximal_mu=proximal_mu, dp=dp, forward=forward)
    trainer.run(cuda_graph=cuda_graph)
    return trainer.results(on_host)
