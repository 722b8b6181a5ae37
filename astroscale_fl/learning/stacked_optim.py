"""Adam and SGD on stacked parameters (a leading node axis), one state per node.

The update is torch's own (``torch.optim.Adam`` / ``torch.optim.SGD`` with their defaults:
L2 weight decay added to the gradient, Adam's bias corrections from the node's own step
count, SGD momentum without dampening), written with tensor-valued per-node step sizes so
that it is CUDA-graph capturable and so that a node whose ``active`` flag is off in a step
keeps its weights and optimizer state unchanged (``torch.where``, exact).

Strategy terms act on the gradient before the optimizer, in the order of the one-by-one
loop's hooks: FedProx' ``mu (w - w_global)``, then SCAFFOLD's ``c - c_i``.
"""

from __future__ import annotations

import torch

from astroscale_fl.errors import ConfigError


class StackedOptimizer:
    """In-place optimizer over ``params`` (name -> (K, ...) tensor); see the module docstring."""

    def __init__(self, params: dict[str, torch.Tensor], spec, *, proximal_mu: float = 0.0,
                 anchors: dict[str, torch.Tensor] | None = None, corrections: dict[str, torch.Tensor] | None = None):
        if spec.name not in ("adam", "sgd"):
            raise ConfigError(f"train.optimizer: expected 'sgd' or 'adam', got {spec.name!r}")
        self.params, self.spec = params, spec
        self.proximal_mu, self.anchors, self.corrections = float(proximal_mu), anchors, corrections
        first = next(iter(params.values()))
        num_nodes = first.shape[0]
        self.step_count = torch.zeros(num_nodes, dtype=torch.float64, device=first.device)
        self.exp_avg = {n: torch.zeros_like(p, requires_grad=False) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p, requires_grad=False) for n, p in params.items()} if spec.name == "adam" else None

    @staticmethod
    def _per_node(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        """Apply one step to the nodes whose ``active`` (K,) flag is set."""
        spec = self.spec
        self.step_count.add_(active.to(torch.float64))
        if spec.name == "adam":
            beta1, beta2 = spec.betas
            bias1 = 1.0 - torch.pow(beta1, self.step_count)
            step_size = (spec.lr / bias1).to(torch.float32)
            bias2_sqrt = (1.0 - torch.pow(beta2, self.step_count)).sqrt().to(torch.float32)
        for name, p in self.params.items():
            g = self._gradient(name, p, grads[name])
            on = self._per_node(active, p)
            if spec.name == "adam":
                m = torch.lerp(self.exp_avg[name], g, 1.0 - beta1)
                v = self.exp_avg_sq[name].mul(beta2).addcmul_(g, g, value=1.0 - beta2)
                denom = (v.sqrt() / self._per_node(bias2_sqrt, p)).add_(spec.eps)
                new = p - self._per_node(step_size, p) * (m / denom)
                self.exp_avg[name].copy_(torch.where(on, m, self.exp_avg[name]))
                self.exp_avg_sq[name].copy_(torch.where(on, v, self.exp_avg_sq[name]))
            else:
                if spec.momentum:
                    buf = self.exp_avg[name].mul(spec.momentum).add_(g)
                    self.exp_avg[name].copy_(torch.where(on, buf, self.exp_avg[name]))
                    g = buf
                new = p.add(g, alpha=-spec.lr)
            p.copy_(torch.where(on, new, p))

    def _gradient(self, name: str, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.proximal_mu:
            g = g.add(p - self.anchors[name], alpha=self.proximal_mu)
        if self.corrections is not None:
            g = g + self.corrections[name]
        if self.spec.weight_decay:
            g = g.add(p, alpha=self.spec.weight_decay)
        return g
