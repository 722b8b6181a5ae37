"""DP-SGD: per-sample clipping before noise, noise really added, hooks as post-processing.

Reference per-sample gradients come from a per-example autograd loop, independent of both
backends; every check runs on the ghost backend (our default) and on Opacus' hooks.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from astroscale_fl.errors import ConfigError
from astroscale_fl.federation.local_objectives import proximal_gradient
from astroscale_fl.learning.models import MLP, Linear
from astroscale_fl.learning.training import train_local
from astroscale_fl.privacy import PrivacyLedger
from astroscale_fl.privacy.dp_sgd import make_private, poisson_batches, train_local_dp
from astroscale_fl.privacy.ledger import create_accountant

BACKENDS = ["ghost", "opacus"]
C = 0.5  # max_grad_norm


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(rows, parameters) gradients of ℓ_i = (f(x_i) − y_i)², one autograd call per row."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(y)):
        loss = (model(x[i : i + 1]) - y[i : i + 1]).pow(2).sum()
        rows.append(flat(torch.autograd.grad(loss, params)))
    return torch.stack(rows)


def clipped_mean(grads: torch.Tensor, clip: float, denominator: float) -> torch.Tensor:
    norms = grads.norm(dim=1)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = grads * factors[:, None]
    assert (clipped.norm(dim=1) <= clip + 1e-6).all()
    return clipped.sum(0) / denominator


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen)
    x[:5] *= 300.0  # rows with gradients far above the clipping norm
    y = torch.randn(40, generator=gen) * 10
    return x, y


def one_step(backend, model, x, y, index, noise_multiplier=0.0, ebs=8.0, seed=0):
    """One DP step; returns the gradient the optimizer would apply."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    private, dp = make_private(model, opt, noise_multiplier=noise_multiplier, max_grad_norm=C, expected_batch_size=ebs, noise_seed=seed, backend=backend)
    private.train()
    dp.zero_grad()
    prediction = private(x[index])
    loss = nn.functional.mse_loss(prediction, y[index]) if len(index) else prediction.sum() * 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss.backward()
    dp.pre_step()
    return flat(p.grad for p in model.parameters()), private, dp


def test_opacus_grad_samples_are_the_true_per_sample_gradients_and_get_clipped(data):
    """Inspect Opacus' per-sample gradients (p.grad_sample) before noise: they match the loop, and
    the clipped ones each have norm ≤ max_grad_norm."""
    x, y = data
    torch.manual_seed(1)
    model = MLP(6, [16, 16])
    reference = per_sample_grads(model, x[:12], y[:12])
    assert (reference.norm(dim=1) > 10 * C).sum() >= 5  # the test really needs clipping
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    private, dp = make_private(model, opt, noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=12, backend="opacus")
    loss = nn.functional.mse_loss(private(x[:12]), y[:12])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss.backward()
    grad_samples = torch.cat([gs.reshape(12, -1) for gs in dp.grad_samples], dim=1)
    torch.testing.assert_close(grad_samples, reference, rtol=1e-4, atol=1e-4)
    dp.clip_and_accumulate()  # Opacus' clipping, before its noise
    summed = flat(p.summed_grad for p in model.parameters())
    torch.testing.assert_close(summed, clipped_mean(reference, C, 1.0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_norms_and_clipped_mean_without_noise(backend, data):
    x, y = data
    torch.manual_seed(1)
    model = MLP(6, [16, 16])
    index = torch.arange(0, 20)
    reference = per_sample_grads(copy.deepcopy(model), x[index], y[index])
    grad, _, dp = one_step(backend, model, x, y, index, noise_multiplier=0.0, ebs=8.0)
    torch.testing.assert_close(grad, clipped_mean(reference, C, 8.0), rtol=1e-4, atol=1e-6)
    assert grad.norm() <= len(index) * C / 8.0 + 1e-5  # what clipping guarantees, whatever the data
    if backend == "ghost":  # the ghost backend's per-sample norms are the true ones
        torch.testing.assert_close(dp.last_per_sample_norms, reference.norm(dim=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_huge_row_contributes_at_most_max_grad_norm(backend, data):
    x, y = data
    torch.manual_seed(2)
    model = Linear(6)
    grad, _, _ = one_step(backend, model, x * 1e4, y, torch.tensor([0]), noise_multiplier=0.0, ebs=1.0)
    assert grad.norm() <= C + 1e-5
    assert grad.norm() >= C * 0.999  # clipped to C, not zeroed


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_is_added_with_the_right_scale(backend, data):
    x, y = data
    torch.manual_seed(3)
    model = MLP(6, [64, 64])
    index = torch.arange(5, 25)
    clean, _, _ = one_step(backend, copy.deepcopy(model), x, y, index, noise_multiplier=0.0, ebs=20.0)
    noisy, _, _ = one_step(backend, copy.deepcopy(model), x, y, index, noise_multiplier=2.0, ebs=20.0, seed=7)
    noise = (noisy - clean) * 20.0
    assert not torch.allclose(noisy, clean)
    assert abs(noise.std().item() / (2.0 * C) - 1) < 0.05  # std σC on the clipped sum (≈ 4,600 coordinates)
    assert abs(noise.mean().item()) < 0.05 * 2.0 * C
    again, _, _ = one_step(backend, copy.deepcopy(model), x, y, index, noise_multiplier=2.0, ebs=20.0, seed=8)
    assert not torch.allclose(again, noisy)  # fresh noise per seed


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_is_a_noise_only_step(backend, data):
    x, y = data
    torch.manual_seed(4)
    model = MLP(6, [16])
    grad, _, _ = one_step(backend, copy.deepcopy(model), x, y, torch.zeros(0, dtype=torch.long), noise_multiplier=0.0)
    assert torch.count_nonzero(grad) == 0
    grad, _, _ = one_step(backend, copy.deepcopy(model), x, y, torch.zeros(0, dtype=torch.long), noise_multiplier=1.0)
    assert torch.count_nonzero(grad) == grad.numel()


@pytest.mark.parametrize("model_factory", [lambda: MLP(6, [16, 8]), lambda: Linear(6), lambda: MLP(6, [16], activation="tanh")])
def test_ghost_and_opacus_train_identically_without_noise(model_factory, data):
    x, y = data
    torch.manual_seed(5)
    start = model_factory()
    batches = [torch.arange(0, 7), torch.zeros(0, dtype=torch.long), torch.arange(3, 30), torch.tensor([39])]
    results = []
    for backend in BACKENDS:
        model = copy.deepcopy(start)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        private, dp = make_private(model, opt, noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=10.0, backend=backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = train_local_dp(private, dp, x, y, iter(batches))
        assert report.steps == 4
        results.append(flat(model.parameters()).detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_make_private_also_works_in_plain_train_local(backend, data):
    """Without strategy hooks, the pair works in the existing loop and gives the same model."""
    x, y = data
    torch.manual_seed(6)
    start = MLP(6, [16])
    batches = [torch.arange(0, 9), torch.zeros(0, dtype=torch.long), torch.arange(9, 30)]
    out = []
    for loop in (train_local, train_local_dp):
        model = copy.deepcopy(start)
        private, dp = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=10.0, backend=backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loop(private, dp, x, y, iter(batches))
        out.append(flat(model.parameters()).detach())
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fedprox_gradient_is_added_after_noise_not_clipped(backend, data):
    x, y = data
    torch.manual_seed(7)
    model = MLP(6, [16])
    global_params = [p.detach().clone() for p in model.parameters()]
    proximal = proximal_gradient(model, mu=0.3)  # what the node runs: anchored at the global weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(5.0)  # far from the global model: μ(w − w_g) has a norm ≫ max_grad_norm
    mu = 0.3
    index = torch.arange(0, 16)
    reference = clipped_mean(per_sample_grads(copy.deepcopy(model), x[index], y[index]), C, 8.0)
    prox = flat(mu * (p.detach() - g) for p, g in zip(model.parameters(), global_params))
    assert prox.norm() > 10 * C
    before = flat(model.parameters()).detach().clone()

    def after_backward(m):
        assert isinstance(m, MLP)  # the hook gets the original model
        proximal(m)

    private, dp = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=8.0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_local_dp(private, dp, x, y, iter([index]), after_backward=after_backward)
    step = before - flat(model.parameters()).detach()
    torch.testing.assert_close(step, reference + prox, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaffold_correction_is_added_after_noise_not_clipped(backend, data):
    x, y = data
    torch.manual_seed(8)
    model = MLP(6, [16])
    correction = [torch.full_like(p, 3.0) for p in model.parameters()]  # c − c_i, norm ≫ max_grad_norm
    index = torch.arange(10, 30)
    reference = clipped_mean(per_sample_grads(copy.deepcopy(model), x[index], y[index]), C, 8.0)
    before = flat(model.parameters()).detach().clone()

    def after_backward(m):
        for p, c in zip(m.parameters(), correction):
            p.grad.add_(c)

    for sigma in (0.0, 1.0):
        model_copy = copy.deepcopy(model)
        private, dp = make_private(model_copy, torch.optim.SGD(model_copy.parameters(), lr=1.0), noise_multiplier=sigma, max_grad_norm=C, expected_batch_size=8.0, noise_seed=3, backend=backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_local_dp(private, dp, x, y, iter([index]), after_backward=after_backward)
        step = before - flat(model_copy.parameters()).detach()
        if sigma == 0.0:
            torch.testing.assert_close(step, reference + flat(correction), rtol=1e-4, atol=1e-5)
        else:  # noise is on the data gradient only: what remains is N(0, (σC/8)²)
            residual = (step - reference - flat(correction)) * 8.0
            assert 0.8 < residual.std().item() / (sigma * C) < 1.2


def test_poisson_batches_are_bernoulli_masks():
    gen = torch.Generator().manual_seed(0)
    batches = list(poisson_batches(1000, 0.01, 3000, gen))
    assert len(batches) == 3000
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    assert abs(sizes.mean().item() - 10.0) < 0.3
    assert abs(sizes.var().item() - 1000 * 0.01 * 0.99) < 1.0  # binomial variance: sizes vary
    small = [len(b) for b in poisson_batches(50, 0.02, 200, gen)]
    assert len(small) == 200 and 0 in small  # empty batches (p ≈ 0.36 here) are yielded, not skipped
    counts = torch.bincount(torch.cat(batches), minlength=1000).double()
    assert abs(counts.mean().item() - 30.0) < 0.5
    assert all(len(torch.unique(b)) == len(b) for b in batches[:100])
    again = list(poisson_batches(1000, 0.01, 3000, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ledger_matches_an_opacus_accountant_stepped_by_the_optimizer(backend, tmp_path, data):
    """Rounds of real DP training with partial participation, a restart from the saved ledger
    and a changed noise multiplier: the ledger's ε equals that of one Opacus accountant that
    the DP optimizer itself stepped at every step of the node's life."""
    x, y = data
    n, q = len(y), 0.2
    life = create_accountant("rdp")
    path = tmp_path / "privacy-ledger.json"
    ledger = PrivacyLedger("rdp", 1e-3)
    participates = [True, False, True, True, False, True]
    for rnd, joined in enumerate(participates, start=1):
        if not joined:
            continue
        sigma = 1.1 if rnd < 4 else 0.9  # e.g. a new run with another noise multiplier
        ledger = PrivacyLedger.load(path) if path.exists() else ledger  # the node restarts every round
        torch.manual_seed(rnd)
        model = MLP(6, [8])
        private, dp = make_private(model, torch.optim.SGD(model.parameters(), lr=0.05), noise_multiplier=sigma, max_grad_norm=C, expected_batch_size=q * n, noise_seed=rnd, backend=backend)
        dp.attach_step_hook(life.get_optimizer_hook_fn(sample_rate=q))
        steps = 7
        ledger.record(sigma, q, steps)
        ledger.save(path)  # write-ahead: the spend is on disk before any noised output exists
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = train_local_dp(private, dp, x, y, poisson_batches(n, q, steps, torch.Generator().manual_seed(rnd)))
        assert report.steps == steps
    restarted = PrivacyLedger.load(path)
    assert restarted.history == [(1.1, q, 14), (0.9, q, 14)]
    assert [tuple(h) for h in life.history] == restarted.history
    assert restarted.epsilon() == pytest.approx(life.get_epsilon(delta=1e-3), rel=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_matches_the_cpu_reference(backend, data):
    x, y = data
    torch.manual_seed(9)
    model = MLP(6, [16])
    index = torch.arange(0, 20)
    reference = clipped_mean(per_sample_grads(copy.deepcopy(model), x[index], y[index]), C, 8.0)
    fresh = copy.deepcopy(model).cuda()  # taken before make_private hooks the model's layers
    grad, _, _ = one_step(backend, model.cuda(), x.cuda(), y.cuda(), index.cuda(), noise_multiplier=0.0, ebs=8.0)
    torch.testing.assert_close(grad.cpu(), reference, rtol=1e-3, atol=1e-5)
    noisy, _, _ = one_step(backend, fresh, x.cuda(), y.cuda(), index.cuda(), noise_multiplier=1.0, ebs=8.0)
    assert noisy.is_cuda and not torch.allclose(noisy.cpu(), reference)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrapping_a_wrapped_model_again_is_refused_clearly(backend, data):
    """A model (or a deepcopy of one) that make_private hooked cannot be wrapped again: its layers
    would carry two sets of per-sample hooks (Opacus: "Trying to add hooks twice")."""
    x, y = data
    model = MLP(6, [16])
    fresh = copy.deepcopy(model)
    one_step(backend, model, x, y, torch.arange(0, 10))
    for again in (model, copy.deepcopy(model)):
        with pytest.raises(ConfigError, match="already went through make_private"):
            make_private(again, torch.optim.SGD(again.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=C, expected_batch_size=8.0, backend=backend)
    grad, _, _ = one_step(backend, fresh, x, y, torch.arange(0, 10), noise_multiplier=1.0)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_repository_fedprox_and_scaffold_hooks_run_as_post_processing(backend, data):
    """astroscale_fl.federation.local_objectives' hooks (keyed by parameter name) through train_local_dp."""
    objectives = pytest.importorskip("astroscale_fl.federation.local_objectives")
    x, y = data
    torch.manual_seed(10)
    model = MLP(6, [16])
    index = torch.arange(0, 16)
    mu = 0.5
    server_c = {name: torch.full(p.shape, 2.0).numpy() for name, p in model.named_parameters()}
    node_c = {name: torch.full(p.shape, -1.0).numpy() for name, p in model.named_parameters()}
    hooks = objectives.combine([objectives.proximal_gradient(model, mu), objectives.control_correction(model, server_c, node_c)])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)  # w − w_g = 4 everywhere
    reference = clipped_mean(per_sample_grads(copy.deepcopy(model), x[index], y[index]), C, 8.0)
    before = flat(model.parameters()).detach().clone()
    private, dp = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=8.0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_local_dp(private, dp, x, y, iter([index]), after_backward=hooks)
    step = before - flat(model.parameters()).detach()
    torch.testing.assert_close(step, reference + mu * 4.0 + 3.0, rtol=1e-4, atol=1e-5)  # + μ(w − w_g) + (c − c_i), unclipped
