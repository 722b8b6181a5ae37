"""Ghost clipping: DP-SGD's per-sample clipping for models built of ``nn.Linear`` layers.

For a linear layer ``y = W a + b`` with output gradient ``e_i``, the per-sample gradient is
``e_i a_iᵀ`` (and ``e_i``), so ``‖g_i‖² = Σ_layers ‖e_i‖²(‖a_i‖² + 1)`` and the clipped sum is
``(c ⊙ E)ᵀ A``: one matmul per layer, as in a non-private backward pass, without
materialising per-sample gradients.

:class:`GhostClipModule` records each layer's input and output gradient;
:class:`GhostDPOptimizer` has Opacus' ``DPOptimizer`` interface, its ``pre_step`` being
``clip_and_accumulate -> add_noise -> scale_grad``. :func:`astroscale_fl.privacy.dp_sgd.make_private`
picks this backend (``"ghost"``) when :func:`ghost_supported` holds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from astroscale_fl.errors import ConfigError


def ghost_supported(model: nn.Module) -> bool:
    """Whether every trainable parameter of ``model`` is the weight or bias of an ``nn.Linear``."""
    linear_params = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    return all(id(p) in linear_params for p in model.parameters() if p.requires_grad)


class GhostClipModule(nn.Module):
    """Wraps a model of ``nn.Linear`` layers; records each layer's input and output gradient.

    Forward passes in training mode with gradients enabled are recorded; evaluation and
    ``torch.no_grad`` passes are not. Output gradients are recorded either by tensor hooks
    during ``loss.backward()`` (so the pair works in the plain ``train_local``) or, faster,
    by :meth:`GhostDPOptimizer.private_backward` (no parameter gradients are computed; used
    by :func:`train_local_dp`). Like Opacus' ``GradSampleModule``, the original model is
    ``._module`` (export that one: its parameter names carry no prefix).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if not ghost_supported(module):
            raise ConfigError("privacy: the ghost DP backend supports models whose trainable parameters all sit in nn.Linear layers; use backend 'opacus'")
        self._module = module
        self.layers = [m for m in module.modules() if isinstance(m, nn.Linear) and any(p.requires_grad for p in m.parameters(recurse=False))]
        self.activations: dict[nn.Linear, torch.Tensor] = {}
        self.backprops: dict[nn.Linear, torch.Tensor] = {}
        self.outputs: dict[nn.Linear, torch.Tensor] = {}
        self.keep_outputs = False  # True: keep outputs for private_backward instead of hooking them
        self._handles = [layer.register_forward_hook(self._capture) for layer in self.layers]
        module.ghost_clip_hooks = True  # marks the model (and any deepcopy of it) as wrapped

    def forward(self, *args, **kwargs):  # noqa: D102
        return self._module(*args, **kwargs)

    def _capture(self, layer: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and layer.training and output.requires_grad):
            return
        if layer in self.activations:
            raise RuntimeError("privacy: one forward pass per DP step (zero_grad between steps; shared layers are not supported)")
        (activation,) = inputs
        if activation.dim() != 2:
            raise RuntimeError(f"privacy: the ghost DP backend needs 2-D inputs to linear layers, got shape {tuple(activation.shape)}")
        self.activations[layer] = activation.detach()
        if self.keep_outputs:
            self.outputs[layer] = output
        else:
            output.register_hook(partial(self._store_backprop, layer))

    def _store_backprop(self, layer: nn.Linear, grad: torch.Tensor) -> None:
        self.backprops[layer] = grad.detach()

    def clear(self) -> None:
        """Forget recorded activations, outputs and output gradients."""
        self.activations.clear()
        self.backprops.clear()
        self.outputs.clear()

    def remove_hooks(self) -> None:
        """Detach from the wrapped model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._module.__dict__.pop("ghost_clip_hooks", None)
        self.clear()


class GhostDPOptimizer:
    """DP-SGD optimizer for a :class:`GhostClipModule`, with Opacus' ``DPOptimizer`` interface.

    ``loss.backward()`` (or :meth:`private_backward`) on the *mean* batch loss records
    per-layer output gradients; :meth:`pre_step` replaces every ``p.grad`` by
    ``(Σ_i clip(g_i) + N(0, σ²C²)) / expected_batch_size``; :meth:`step` = ``pre_step`` + the
    wrapped optimizer's step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        module: GhostClipModule,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        loss_reduction: str = "mean",
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
    ):
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"Unexpected value for loss_reduction: {loss_reduction}")
        self.original_optimizer = optimizer
        self.module = module
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.expected_batch_size = expected_batch_size
        self.loss_reduction = loss_reduction
        self.generator = generator
        self.secure_mode = secure_mode
        self.step_hook: Callable[[GhostDPOptimizer], None] | None = None
        self.last_per_sample_norms: torch.Tensor | None = None  # unclipped ‖g_i‖ of the last step (tests, diagnostics)
        self._layer_params = [(layer.weight if layer.weight.requires_grad else None, layer.bias if layer.bias is not None and layer.bias.requires_grad else None) for layer in module.layers]
        optimizer_params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        module_params = {id(p) for pair in self._layer_params for p in pair if p is not None}
        if optimizer_params != module_params:
            raise ConfigError("privacy: the optimizer must hold exactly the model's trainable parameters")
        self._params = [p for pair in self._layer_params for p in pair if p is not None]
        self._flat: torch.Tensor | None = None  # one buffer for all gradients, viewed per parameter
        self._views: list[torch.Tensor] = []
        self._noise: torch.Tensor | None = None  # add_noise's buffer, reused across steps

    # --- Opacus DPOptimizer interface -------------------------------------------------------
    @property
    def params(self) -> list[nn.Parameter]:
        """The parameters being optimised."""
        return [p for group in self.original_optimizer.param_groups for p in group["params"]]

    @property
    def param_groups(self) -> list[dict]:  # noqa: D102
        return self.original_optimizer.param_groups

    @property
    def state(self):  # noqa: D102
        return self.original_optimizer.state

    @property
    def accumulated_iterations(self) -> int:
        """Always 1: no gradient accumulation (read by Opacus' accountant hooks)."""
        return 1

    def attach_step_hook(self, fn: Callable[[GhostDPOptimizer], None]) -> None:
        """Call ``fn(self)`` after every clip+noise, e.g. an Opacus accountant's ``get_optimizer_hook_fn``."""
        self.step_hook = fn

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102
        self.module.clear()
        self.original_optimizer.zero_grad(set_to_none=set_to_none)

    def private_backward(self, loss: torch.Tensor) -> None:
        """Record the per-layer output gradients of ``loss`` without computing parameter gradients.

        Needs the forward pass to have run with ``module.keep_outputs = True``.
        """
        layers = [layer for layer in self.module.layers if layer in self.module.outputs]
        if len(layers) != len(self.module.layers):
            raise RuntimeError("privacy: private_backward needs a training-mode forward with keep_outputs=True")
        grads = torch.autograd.grad(loss, [self.module.outputs[layer] for layer in layers])
        for layer, grad in zip(layers, grads, strict=True):
            self.module.backprops[layer] = grad
        self.module.outputs.clear()

    def _buffer(self, like: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self._flat is None or self._flat.device != like.device or self._flat.dtype != like.dtype:
            self._flat = torch.empty(sum(p.numel() for p in self._params), device=like.device, dtype=like.dtype)
            self._views, offset = [], 0
            for p in self._params:
                self._views.append(self._flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        return self._flat, self._views

    def pre_step(self, closure=None) -> bool:
        """Opacus' ``pre_step``: :meth:`clip_and_accumulate`, :meth:`add_noise`, :meth:`scale_grad`;
        leaves the result in ``p.grad`` and calls the step hook (the accountant's)."""
        module = self.module
        if len(module.backprops) != len(module.layers):
            raise RuntimeError("privacy: no per-sample gradients recorded; run a training-mode forward and loss.backward() before step()")
        self.clip_and_accumulate()
        self.add_noise()
        self.scale_grad()
        module.clear()
        if self.step_hook is not None:
            self.step_hook(self)
        return True

    def clip_and_accumulate(self) -> None:
        """Sum of the per-sample gradients, each clipped to ``max_grad_norm``, into ``p.grad``.

        Ghost clipping: ``‖g_i‖² = Σ_layers ‖e_i‖²(‖a_i‖² + 1)`` and the clipped sum of a layer
        is ``(c ⊙ E)ᵀ A``, without materialising per-sample gradients.
        """
        module = self.module
        activations = [module.activations[layer] for layer in module.layers]
        backprops = [module.backprops[layer] for layer in module.layers]
        batch = activations[0].shape[0]
        # loss_reduction "mean": recorded gradients are ∇ℓ_i / batch; per-sample gradients are batch × those.
        unscale = float(batch) if self.loss_reduction == "mean" and batch else 1.0
        squared = None
        for (weight, bias), a, e in zip(self._layer_params, activations, backprops, strict=True):
            e2 = (e * e).sum(1)
            factor = (a * a).sum(1) if weight is not None else None
            if bias is not None:
                factor = factor + 1.0 if factor is not None else 1.0
            term = e2 * factor
            squared = term if squared is None else squared + term
        norms = squared.sqrt().mul_(unscale)
        self.last_per_sample_norms = norms
        clip = (self.max_grad_norm / (norms + 1e-6)).clamp_(max=1.0).mul_(unscale).unsqueeze(1)
        flat, views = self._buffer(activations[0])
        flat.zero_()
        index = 0
        for (weight, bias), a, e in zip(self._layer_params, activations, backprops, strict=True):
            clipped = e * clip
            if weight is not None:
                views[index].addmm_(clipped.t(), a)
                index += 1
            if bias is not None:
                views[index].add_(clipped.sum(0))
                index += 1
        for p, view in zip(self._params, views, strict=True):
            p.grad = view

    def add_noise(self) -> None:
        """Add ``N(0, (σC)²)`` to the clipped sum (OS randomness unless a generator was given)."""
        std = self.noise_multiplier * self.max_grad_norm
        if std <= 0 or self._flat is None:
            return
        if self._noise is None or self._noise.shape != self._flat.shape or self._noise.device != self._flat.device \
                or self._noise.dtype != self._flat.dtype:
            self._noise = torch.empty_like(self._flat)
        if self.secure_mode:
            from opacus.optimizers.optimizer import _generate_noise

            self._noise.copy_(_generate_noise(std, self._noise, self.generator, self.secure_mode))
        else:
            self._noise.normal_(0.0, std, generator=self.generator)
        self._flat.add_(self._noise)

    def scale_grad(self) -> None:
        """Divide by ``expected_batch_size`` (``loss_reduction="mean"``), as Opacus does."""
        if self.loss_reduction == "mean" and self._flat is not None:
            self._flat.mul_(1.0 / self.expected_batch_size)

    def step(self, closure=None):
        """Clip + noise (:meth:`pre_step`), then the wrapped optimizer's step."""
        if closure is not None:
            with torch.enable_grad():
                closure()
        self.pre_step()
        return self.original_optimizer.step()

    def state_dict(self):  # noqa: D102
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:  # noqa: D102
        self.original_optimizer.load_state_dict(state_dict)
