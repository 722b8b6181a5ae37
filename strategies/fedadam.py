"""FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2).

The nodes train as in FedAvg. The server treats ``delta = weighted mean of client models -
global model`` as a pseudo-gradient and takes an Adam step on it:

    m <- beta1 * m + (1 - beta1) * delta
    v <- beta2 * v + (1 - beta2) * delta^2
    w <- w + eta_t * m / (sqrt(v) + tau)

With ``bias_correction`` (the default, as Flower's ``FedAdam``) the step size is Kingma & Ba's
``eta_t = server_lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` at the t-th server step, which undoes
the zero start of ``m`` and ``v``. With the default betas the factor is 1 at t=1, ~0.5 for
t = 5..30 and back to 1 after ~200 steps, so the same ``server_lr`` moves the model about half as
far in a typical run as without the correction (Reddi et al.'s Algorithm 2:
``bias_correction=false``). Flower counts ``t`` as the server round + 1, one step ahead of Adam.
``tau`` controls the adaptivity. The moments ``m``, ``v`` and the step count are the
strategy's state (``state_dict``), so a checkpoint can resume the optimiser.
"""

from __future__ import annotations

import numpy as np

from astroscale_fl.federation.strategy_params import FedAdamParams
from strategies.fedavg import FedAvg


class FedAdam(FedAvg):
    """Server-side Adam on the FedAvg pseudo-gradient."""

    def __init__(self, *, server_lr: float, beta1: float, beta2: float, tau: float, bias_correction: bool, **kwargs) -> None:
        super().__init__(server_lr=server_lr, **kwargs)
        self.hyper: FedAdamParams = FedAdamParams(server_lr, beta1, beta2, tau, bool(bias_correction))
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.steps = 0  # server steps taken (t of the bias correction)

    def step_size(self) -> float:
        """``server_lr``, bias-corrected for the current step ``t = self.steps`` when enabled."""
        hyper = self.hyper
        if not hyper.bias_correction:
            return hyper.server_lr
        t = max(self.steps, 1)
        return hyper.server_lr * np.sqrt(1.0 - hyper.beta2**t) / (1.0 - hyper.beta1**t)

    def server_step(self, mean: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One Adam step from the global model along the pseudo-gradient ``mean - global``."""
        assert self.global_arrays is not None, "configure_train sets the global arrays first"
        self.steps += 1
        eta = self.step_size()
        beta1, beta2, tau = self.hyper.beta1, self.hyper.beta2, self.hyper.tau
        out = {}
        for name, avg in mean.items():
            current = self.global_arrays[name].astype(np.float64)
            delta = avg.astype(np.float64) - current
            m = beta1 * self.m.get(name, np.zeros_like(delta)) + (1 - beta1) * delta
            v = beta2 * self.v.get(name, np.zeros_like(delta)) + (1 - beta2) * delta**2
            self.m[name], self.v[name] = m, v
            out[name] = (current + eta * m / (np.sqrt(v) + tau)).astype(avg.dtype)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()},
                "steps": np.asarray(self.steps, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("v/")}
        self.steps = int(state.get("steps", 0))
