"""FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2).

The nodes train as in FedAvg. The server treats ``delta = weighted mean of client models -
global model`` as a pseudo-gradient and takes an Adam step on it:

    m <- beta1 * m + (1 - beta1) * delta
    v <- beta2 * v + (1 - beta2) * delta^2
    w <- w + server_lr * m / (sqrt(v) + tau)

as in the paper (no bias correction; ``tau`` controls the adaptivity). The moments ``m`` and
``v`` are the strategy's state (``state_dict``), so a checkpoint can resume the optimiser.
"""

from __future__ import annotations

import numpy as np

from strategies.fedavg import FedAvg


class FedAdam(FedAvg):
    """Server-side Adam on the FedAvg pseudo-gradient."""

    def __init__(self, *, server_lr: float, beta1: float, beta2: float, tau: float, **kwargs) -> None:
        super().__init__(server_lr=server_lr, **kwargs)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def params(self) -> dict[str, float]:
        return {"server_lr": self.server_lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    def server_step(self, mean: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One Adam step from the global model along the pseudo-gradient ``mean - global``."""
        assert self.global_arrays is not None, "configure_train sets the global arrays first"
        out = {}
        for name, avg in mean.items():
            current = self.global_arrays[name].astype(np.float64)
            delta = avg.astype(np.float64) - current
            m = self.beta1 * self.m.get(name, np.zeros_like(delta)) + (1 - self.beta1) * delta
            v = self.beta2 * self.v.get(name, np.zeros_like(delta)) + (1 - self.beta2) * delta**2
            self.m[name], self.v[name] = m, v
            out[name] = (current + self.server_lr * m / (np.sqrt(v) + self.tau)).astype(avg.dtype)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("v/")}
