"""What strategies change in a node's local training: gradient terms and control variates.

Both terms act on gradients after the data gradient is computed (``after_backward`` hooks of
:func:`astroscale_fl.learning.training.train_local`), because neither depends on the node's data:

- FedProx' proximal term ``mu/2 ||w - w_global||^2`` has gradient ``mu (w - w_global)``;
- SCAFFOLD's correction replaces the gradient ``g`` by ``g - c_i + c``.

Keeping them out of the data gradient is also what lets DP-SGD clip and noise only the
per-example data gradients and treat these terms as post-processing.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from astroscale_fl.atomic import atomic_path
from astroscale_fl.data.node_dirs import node_state_dir
from astroscale_fl.federation.protocol import ARRAYS_KEY, CONTROL_KEY, ScaffoldCorrection
from astroscale_fl.federation.records import arrays_to_numpy, numpy_to_arrays
from astroscale_fl.learning.steps import GradHook


def combine(hooks: list[GradHook]) -> GradHook | None:
    """One hook that runs ``hooks`` in order (None when there are none)."""
    if not hooks:
        return None

    def run_all(model: nn.Module) -> None:
        for hook in hooks:
            hook(model)

    return run_all


def proximal_gradient(model: nn.Module, mu: float) -> GradHook:
    """FedProx: add ``mu * (w - w_global)`` to each gradient, ``w_global`` = the weights now."""
    anchors = {name: p.detach().clone() for name, p in model.named_parameters()}

    def hook(module: nn.Module) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                if p.grad is not None:
                    p.grad.add_(p - anchors[name], alpha=mu)

    return hook


def control_correction(model: nn.Module, server_c: dict[str, np.ndarray], node_c: dict[str, np.ndarray]) -> GradHook:
    """SCAFFOLD: replace each gradient ``g`` by ``g - c_i + c``."""
    device = next(model.parameters()).device
    shift = {name: torch.as_tensor(server_c[name] - node_c[name], dtype=p.dtype, device=device)
             for name, p in model.named_parameters()}

    def hook(module: nn.Module) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                if p.grad is not None:
                    p.grad.add_(shift[name])

    return hook


def updated_control(x: dict[str, np.ndarray], y: dict[str, np.ndarray], server_c: dict[str, np.ndarray],
                    node_c: dict[str, np.ndarray], steps: int, local_lr: float) -> dict[str, np.ndarray]:
    """SCAFFOLD option II: ``c_i+ = c_i - c + (x - y) / (K * local_lr)`` (float64)."""
    if steps == 0:
        return {k: v.copy() for k, v in node_c.items()}
    return {k: node_c[k] - server_c[k] + (x[k].astype(np.float64) - y[k].astype(np.float64)) / (steps * local_lr) for k in node_c}


class ControlVariateStore:
    """A node's SCAFFOLD control variate ``c_i``, kept in the node's own state.

    It lives in ``Context.state`` (which survives between rounds of a run, in simulation and
    deployment) and, when the node has a data directory, also in
    ``<data-dir>/.astroscale/scaffold-run<run_id>.npz``, since a restarted SuperNode loses
    ``Context.state``. The server never sees or stores ``c_i``.
    """

    STATE_KEY = "scaffold-c-i"

    def __init__(self, state: RecordDict, run_id: int, data_dir: str | None = None):
        self.state = state
        self.path = node_state_dir(data_dir) / f"scaffold-run{run_id}.npz" if data_dir else None

    def load(self, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The stored ``c_i`` (zeros shaped like ``like`` on first use)."""
        if self.STATE_KEY in self.state:
            return {k: v.astype(np.float64) for k, v in arrays_to_numpy(self.state[self.STATE_KEY]).items()}
        if self.path is not None and self.path.is_file():
            with np.load(self.path) as saved:
                return {k: saved[k].astype(np.float64) for k in like}
        return {k: np.zeros(v.shape, np.float64) for k, v in like.items()}

    def save(self, node_c: dict[str, np.ndarray]) -> None:
        """Keep ``c_i`` in the node state (and its data directory, atomically)."""
        self.state[self.STATE_KEY] = numpy_to_arrays(node_c)
        if self.path is not None:
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **node_c)


def read_control(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The server control variate from a message, as float64 arrays."""
    return {k: v.astype(np.float64) for k, v in arrays_to_numpy(record).items()}


class ScaffoldRound:
    """A node's SCAFFOLD round: ``c`` and ``c_i`` in, corrected plain SGD, ``c_i+ - c_i`` out."""

    def __init__(self, model: nn.Module, correction: ScaffoldCorrection, content: RecordDict, store: ControlVariateStore):
        self.local_lr = correction.local_lr
        self.global_arrays = arrays_to_numpy(content[ARRAYS_KEY])
        self.server_c = read_control(content[CONTROL_KEY])
        self.store = store
        self.node_c = store.load(self.server_c)
        self.hook = control_correction(model, self.server_c, self.node_c)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """SCAFFOLD's local optimizer: plain SGD at ``local_lr`` (its update rule assumes it)."""
        return torch.optim.SGD(model.parameters(), lr=self.local_lr)

    def finish(self, trained: ArrayRecord, steps: int) -> ArrayRecord:
        """Store ``c_i+`` and return ``delta_c_i = c_i+ - c_i`` for the reply."""
        new_c = updated_control(self.global_arrays, arrays_to_numpy(trained), self.server_c, self.node_c, steps, self.local_lr)
        self.store.save(new_c)
        return numpy_to_arrays({k: (new_c[k] - self.node_c[k]).astype(np.float32) for k in new_c})
