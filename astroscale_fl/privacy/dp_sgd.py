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
  layers fed 2-D inputs, e.g. our MLP and linear models): ghost clipping, per-sample
  gradient norms without materialising per-sample gradients (:mod:`.ghost`).
- ``"opacus"``: Opacus' ``GradSampleModule`` + ``DPOptimizer`` (any layer Opacus supports).

Both clip with Opacus' rule ``min(1, C / (‖g_i‖ + 1e-6))``, add ``N(0, (σC)²)`` and divide by
``expected_batch_size``, and both expose the ``DPOptimizer`` interface that
:func:`train_local_dp` and Opacus' accountants' step hooks use (``pre_step``,
``original_optimizer``, ``noise_multiplier``, ``attach_step_hook``, ...).
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from astroscale_fl.errors import ConfigError
from astroscale_fl.learning.steps import GradHook, TrainReport, batch_loss
from astroscale_fl.privacy.ghost import GhostClipModule, GhostDPOptimizer, ghost_supported

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
