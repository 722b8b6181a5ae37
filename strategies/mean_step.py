"""The server step of any of our strategies from an already aggregated mean update.

Wrappers that aggregate themselves (node-level DP noise, secure aggregation) hand the wrapped
strategy only the mean: FedAvg / FedProx / FedAdam take their ``server_step`` on
``global + mean model delta``; SCAFFOLD moves ``x`` by ``server_lr`` along the mean model delta
and ``c`` by ``share`` times the mean control-variate delta (``share``: |S| / N, or q).
"""

from __future__ import annotations

import numpy as np

from strategies.fedavg import FedAvg
from strategies.scaffold import Scaffold


def apply_mean_update(strategy: FedAvg, model_delta: dict[str, np.ndarray], control_delta: dict[str, np.ndarray] | None,
                      share: float) -> dict[str, np.ndarray]:
    """New global arrays from the mean deltas (float64 in, the global arrays' dtypes out)."""
    x = strategy.global_arrays
    assert x is not None, "configure_train sets the global arrays first"
    if isinstance(strategy, Scaffold):
        for name in strategy.control:
            strategy.control[name] = strategy.control[name] + share * np.asarray(control_delta[name], np.float64)  # type: ignore[index]
        return {k: (x[k].astype(np.float64) + strategy.hyper.server_lr * model_delta[k]).astype(x[k].dtype) for k in x}
    return strategy.server_step({k: (x[k].astype(np.float64) + model_delta[k]).astype(x[k].dtype) for k in x})
