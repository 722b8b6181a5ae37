"""DP-SGD for our tensor-slicing training loop (no per-sample ``DataLoader``).

One DP-SGD step on a Poisson-sampled batch ``B`` (each row joins independently with
probability ``q``; the accounting assumes exactly this sampling, empty batches included):

1. per-sample gradients ``g_i = ∇ℓ_i(w)`` of the data loss ``ℓ_i = (f(x_i) − y_i)²``;
2. clip each one to ``max_grad_norm`` C over *all* parameters: ``ḡ_i = g_i · min(1, C/‖g_i‖)``;
3. add Gaussian noise and average: ``G = (Σ_i ḡ_i + N(0, σ²C²·I)) / (q·N)``;
4. post-processing, added to ``G`` *after* step 3 (see below), then the wrapped optimizer's step.

Steps 1–3 are the subsampled Gaussian mechanism that Opacus' accountants (rdp, prv, gdp)
account for, once per step, with ``(noise_multiplier σ, sample_rate q)``.

Why FedProx and SCAFFOLD keep the guarantee
-------------------------------------------
Only the per-sample *data* gradients are clipped and noised. Everything else that moves
the weights is computed from quantities that are either public or already released by the
mechanism, so it is post-processing and costs no privacy:

- FedProx' proximal term ``μ/2‖w − w_g‖²`` depends on the current weights ``w`` (a function
  of earlier noised steps) and the global model ``w_g`` (received from the server), not on
  any row. Its gradient ``μ(w − w_g)`` is added after clipping and noise. It must *not* go
  through per-sample clipping: it is not a per-sample quantity and would distort clipping.
- SCAFFOLD's correction ``c − c_i`` adds the server's control variate (an aggregate of the
  nodes' released variates) minus the node's own variate, which SCAFFOLD derives from the
  node's previous (DP) model updates. Also added after noise.
- The optimizer's momentum / Adam moments / weight decay act on the noised gradient.
- The server's aggregation (FedAvg, FedProx, SCAFFOLD) only sees DP outputs.

Hence the hook ``after_backward(model)`` of :func:`train_local_dp` is applied to the noised
gradient, never to per-sample gradients. Its contract: it may read the model's parameters and values the node received or
released earlier, never the node's rows. (Opacus' own ``DPOptimizer`` silently *drops*
any gradient that is not per-sample: it overwrites ``p.grad`` with the noised sum; so
passing this hook to the plain :func:`astroscale_fl.learning.training.train_local` with a DP
optimizer would silently train plain FedAvg. Use :func:`train_local_dp`.)

What is *not* covered: anything else a node sends about its rows — the training loss,
evaluation metrics, the preprocessing statistics round — is outside this guarantee.

Secrecy of randomness: the guarantee assumes the adversary cannot predict the noise or
the Poisson masks. Seeding them from a value the server knows (e.g. the run's ``seed``)
lets the server subtract the noise. Seeds default to fresh OS randomness; pass fixed seeds
only in tests and benchmarks.

Backends
--------
- ``"ghost"`` (default for models whose trainable parameters all sit in ``nn.Linear``
  layers fed 2-D inputs, e.g. our MLP and linear models): per-sample gradient norms
  without materialising per-sample gradients. For a linear layer ``y = W a + b`` with
  output gradient ``e_i``, the per-sample gradient is ``e_i a_iᵀ`` (and ``e_i``), so
  ``‖g_i‖² = Σ_layers ‖e_i‖²(‖a_i‖² + 1)`` and the clipped sum is ``(c ⊙ E)ᵀ A`` — one matmul
  per layer, as in a non-private backward pass.
- ``"opacus"``: Opacus' ``GradSampleModule`` + ``DPOptimizer`` (any layer Opacus supports).

Both clip with Opacus' rule ``min(1, C / (‖g_i‖ + 1e-6))``, add ``N(0, (σC)²)`` and divide by
``expected_batch_size``, and both expose the ``DPOptimizer`` interface that
:func:`train_local_dp` and Opacus' accountants' step hooks use (``pre_step``,
``original_optimizer``, ``noise_multiplier``, ``attach_step_hook``, ...).
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn

from astroscale_fl.errors import ConfigError
from astroscale_fl.learning.training import GradHook, TrainReport, batch_loss

BACKENDS = ("auto", "ghost", "opacus")

# How many Bernoulli masks poisson_batches draws per call (bounded to ~4M booleans).
_MASK_BUDGET = 1 << 22


def poisson_batches(num_rows: int, sample_rate: float, steps: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """``steps`` index tensors; each row is in each batch independently with probability ``sample_rate``.

    Batches vary in size and may be empty; an empty batch is still a DP step (the node
    releases pure noise) and must be trained on and accounted for. ``generator`` must be
    secret in deployment (see the module docstring); ``None`` draws from fresh OS randomness.
    """
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"privacy: sample rate must be in (0, 1], got {sample_rate}")
    if num_rows < 0 or steps < 0:
        raise ConfigError(f"privacy: expected non-negative rows and steps, got {num_rows} rows, {steps} steps")
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    chunk = max(1, _MASK_BUDGET // max(num_rows, 1))
    done = 0
    while done < steps:
        count = min(chunk, steps - done)
        masks = torch.rand((count, num_rows), generator=generator, device=generator.device) < sample_rate
        for mask in masks:
            yield mask.nonzero().squeeze(1)
        done += count


def _noise_generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63) if seed is None else int(seed))
    return generator


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


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    noise_seed: int | None = None,
    secure_mode: bool = False,
    backend: str = "auto",
):
    """Wrap ``model`` and ``optimizer`` for DP-SGD; returns ``(private_model, dp_optimizer)``.

    ``private_model`` wraps ``model`` (which stays usable and shares its parameters: export
    ``model``, not the wrapper). ``expected_batch_size`` is ``sample_rate × rows`` (the mean
    denominator under Poisson sampling). ``noise_seed=None`` seeds the noise from OS randomness.
    ``backend``: ``"auto"`` (ghost when the model allows it, else opacus), ``"ghost"`` or ``"opacus"``.
    With plain DP-SGD (no strategy hooks) the pair also works with
    :func:`astroscale_fl.learning.training.train_local`; with FedProx / SCAFFOLD hooks use :func:`train_local_dp`.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"privacy.backend: expected one of {list(BACKENDS)}, got {backend!r}")
    if not noise_multiplier >= 0:
        raise ConfigError(f"privacy.noise_multiplier: expected a number >= 0, got {noise_multiplier}")
    if not max_grad_norm > 0:
        raise ConfigError(f"privacy.max_grad_norm: expected a positive number, got {max_grad_norm}")
    if not expected_batch_size > 0:
        raise ConfigError(f"privacy: expected batch size must be positive, got {expected_batch_size}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("privacy: the model has no trainable parameters")
    if getattr(model, "ghost_clip_hooks", False) or hasattr(model, "autograd_grad_sample_hooks"):
        # its layers already carry per-sample hooks (a deepcopy keeps them): wrapping again would double them
        raise ConfigError("privacy: this model already went through make_private (or is a copy of one that did); wrap a fresh model, or a copy taken before wrapping")
    generator = _noise_generator(params[0].device, noise_seed)
    if backend == "auto":
        backend = "ghost" if ghost_supported(model) else "opacus"
    if backend == "ghost":
        private = GhostClipModule(model)
        return private, GhostDPOptimizer(
            optimizer, private, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, generator=generator, secure_mode=secure_mode,
        )
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    return private, DPOptimizer(
        optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size, loss_reduction="mean", generator=generator, secure_mode=secure_mode,
    )


def unwrap(private_model: nn.Module) -> nn.Module:
    """The original model inside a :func:`make_private` wrapper."""
    return getattr(private_model, "_module", private_model)


def train_local_dp(
    private_model: nn.Module,
    dp_optimizer,
    features: torch.Tensor,
    target: torch.Tensor,
    batches: Iterator[torch.Tensor],
    after_backward: GradHook | None = None,
) -> TrainReport:
    """DP-SGD over ``batches`` (use :func:`poisson_batches`): the DP twin of ``train_local``.

    Same hook as :func:`astroscale_fl.learning.training.train_local`, applied as post-processing:
    ``after_backward(model)`` edits the noised gradient (FedProx' ``+ mu (w - w_g)``,
    SCAFFOLD's ``+ c − c_i``) and receives the original model. Every batch, empty
    ones included, is one DP step. The returned loss is computed from the rows without noise:
    keep it on the node (it is not covered by the DP guarantee).
    """
    model = unwrap(private_model)
    private_model.train()
    fast = isinstance(private_model, GhostClipModule) and hasattr(dp_optimizer, "private_backward")
    if fast:
        private_model.keep_outputs = True
    try:
        return _dp_loop(private_model, model, dp_optimizer, features, target, batches, after_backward, fast)
    finally:
        if fast:
            private_model.keep_outputs = False
            private_model.clear()


def _dp_loop(private_model, model, dp_optimizer, features, target, batches, after_backward, fast) -> TrainReport:
    device = features.device
    total, steps = torch.zeros((), device=device), 0
    for index in batches:
        index = index.to(device, non_blocking=True)
        dp_optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(private_model, features, target, index)
        total += loss.detach()
        if fast:
            dp_optimizer.private_backward(loss)
        else:
            loss.backward()
        if not dp_optimizer.pre_step():  # clip per-sample gradients, add noise, scale -> p.grad
            raise RuntimeError("privacy: the DP optimizer skipped a step (gradient accumulation is not supported)")
        # ---- post-processing of the noised gradient: no access to rows below this line ----
        if after_backward is not None:
            after_backward(model)
        dp_optimizer.original_optimizer.step()
        steps += 1
    dp_optimizer.zero_grad(set_to_none=True)
    return TrainReport(loss=float(total) / max(steps, 1), steps=steps, examples=int(features.shape[0]))
