"""Torch models built from the ``model`` config group."""

from __future__ import annotations

import torch
from torch import nn

from astroscale_fl.errors import ConfigError
from astroscale_fl.learning.model_spec import check_mlp

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Fully connected regressor: [Linear -> activation -> dropout] x len(widths) -> Linear(1)."""

    def __init__(self, in_features: int, widths: list[int], activation: str = "relu", dropout: float = 0.0):
        check_mlp(widths, activation, dropout)
        layers: list[nn.Module] = []
        width_in = in_features
        for width in widths:
            layers += [nn.Linear(width_in, width), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, 1))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x).squeeze(-1)


class Linear(nn.Module):
    """Linear regression ``y = w.x + b``."""

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.linear(x).squeeze(-1)


def build_model(model_cfg, in_features: int, seed: int) -> nn.Module:
    """Build the configured model with weights initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model_cfg.name == "mlp":
            return MLP(in_features, model_cfg.widths, model_cfg.activation, float(model_cfg.dropout))
        if model_cfg.name == "linear":
            return Linear(in_features)
    raise ConfigError(f"model: unknown model {model_cfg.name!r}; expected one of ['linear', 'mlp']")
