"""Vectorised local training equals training the nodes one by one (astroscale_fl.learning.vectorized)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from astroscale_fl.errors import ConfigError
from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.learning.models import MLP, Linear
from astroscale_fl.learning.training import make_optimizer, shuffled_batches, train_local
from astroscale_fl.learning.vectorized import LocalOptimizer, NodeWork, StackedDP, stackable, train_stacked
from astroscale_fl.privacy.dp_sgd import make_private, poisson_batches, train_local_dp

SIZES = [50, 131, 7, 0, 64]  # uneven nodes: different step counts and last-batch sizes, one empty


def node_data(sizes=SIZES, features=6, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, features, generator=gen)
        y = x[:, 0] * 2 - x[:, 1] + 0.1 * torch.randn(n, generator=gen)
        out.append((x.to(device), y.to(device)))
    return out


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def strategy_hooks(model, mu, correction):
    """The repository's FedProx and SCAFFOLD hooks, as the ClientApp combines them (c_i = 0, c = correction)."""
    hooks = [objectives.proximal_gradient(model, mu)] if mu else []
    if correction is not None:
        server_c = {n: c.numpy() for n, c in correction.items()}
        hooks.append(objectives.control_correction(model, server_c, {n: 0 * c for n, c in server_c.items()}))
    return objectives.combine(hooks)


def one_by_one(start, data, batches, spec: LocalOptimizer, mu=0.0, corrections=None):
    """Reference: each node trained alone with training.train_local and the repository's hooks."""
    results = []
    for k, ((x, y), node_batches) in enumerate(zip(data, batches)):
        model = copy.deepcopy(start)
        hooks = strategy_hooks(model, mu, corrections[k] if corrections is not None else None)
        optimizer = make_optimizer(model.parameters(), spec.name, spec.lr, spec.momentum, spec.weight_decay)
        report = train_local(model, optimizer, x, y, iter(node_batches), after_backward=hooks)
        results.append((model, report))
    return results


def assert_same(stacked, reference, start, rtol=1e-5, atol=1e-6):
    for (params, report), (model, ref_report) in zip(stacked, reference, strict=True):
        names = [n for n, _ in start.named_parameters()]
        torch.testing.assert_close(flat(params[n] for n in names), flat(model.parameters()), rtol=rtol, atol=atol)
        assert report.steps == ref_report.steps and report.examples == ref_report.examples
        assert report.loss == pytest.approx(ref_report.loss, rel=1e-4, abs=1e-7)


def seeded_batches(data, batch_size, epochs):
    return [list(shuffled_batches(len(y), batch_size, epochs, torch.Generator().manual_seed(100 + k))) for k, (_, y) in enumerate(data)]


@pytest.mark.parametrize("model_factory", [lambda: MLP(6, [16, 8]), lambda: Linear(6), lambda: MLP(6, [12], activation="tanh")])
def test_adam_on_uneven_nodes_matches_train_local_node_by_node(model_factory):
    torch.manual_seed(0)
    start = model_factory()
    data = node_data()
    batches = seeded_batches(data, batch_size=16, epochs=2)
    spec = LocalOptimizer("adam", lr=0.01)
    stacked = train_stacked(start, [NodeWork(x, y, b) for (x, y), b in zip(data, batches)], spec)
    assert_same(stacked, one_by_one(start, data, batches, spec), start)
    assert [r.steps for _, r in stacked] == [8, 18, 2, 2, 8]  # no rows: an empty batch per epoch, as train_local
    untouched = dict(start.named_parameters())
    assert all(torch.equal(stacked[3][0][n], untouched[n].detach()) for n in untouched)  # zero gradients: no change


def test_sgd_momentum_weight_decay_matches():
    torch.manual_seed(1)
    start = MLP(6, [16])
    data = node_data(seed=1)
    batches = seeded_batches(data, batch_size=10, epochs=3)
    spec = LocalOptimizer("sgd", lr=0.01, momentum=0.8, weight_decay=0.01)
    stacked = train_stacked(start, [NodeWork(x, y, b) for (x, y), b in zip(data, batches)], spec)
    assert_same(stacked, one_by_one(start, data, batches, spec), start)


def test_adam_weight_decay_and_fedprox_match():
    torch.manual_seed(2)
    start = MLP(6, [16, 16])
    data = node_data(seed=2)
    batches = seeded_batches(data, batch_size=20, epochs=2)
    spec = LocalOptimizer("adam", lr=0.02, weight_decay=0.001)
    stacked = train_stacked(start, [NodeWork(x, y, b) for (x, y), b in zip(data, batches)], spec, proximal_mu=0.5)
    assert_same(stacked, one_by_one(start, data, batches, spec, mu=0.5), start)


def test_scaffold_corrections_per_node_match():
    torch.manual_seed(3)
    start = MLP(6, [16])
    data = node_data(seed=3)
    batches = seeded_batches(data, batch_size=16, epochs=1)
    corrections = [{n: torch.full_like(p, 0.1 * (k - 2)) for n, p in start.named_parameters()} for k in range(len(data))]
    spec = LocalOptimizer("sgd", lr=0.05)
    nodes = [NodeWork(x, y, b, correction=c) for (x, y), b, c in zip(data, batches, corrections)]
    stacked = train_stacked(start, nodes, spec, proximal_mu=0.1)
    assert_same(stacked, one_by_one(start, data, batches, spec, mu=0.1, corrections=corrections), start)


def test_vmap_forward_equals_batched_matmuls():
    torch.manual_seed(4)
    start = MLP(6, [16, 8], activation="gelu")
    data = node_data(seed=4)
    batches = seeded_batches(data, batch_size=16, epochs=1)
    nodes = [NodeWork(x, y, b) for (x, y), b in zip(data, batches)]
    spec = LocalOptimizer("adam", lr=0.01)
    by_bmm = train_stacked(start, nodes, spec, forward="bmm")
    by_vmap = train_stacked(start, nodes, spec, forward="vmap")
    for (a, _), (b, _) in zip(by_bmm, by_vmap):
        torch.testing.assert_close(flat(a.values()), flat(b.values()), rtol=1e-5, atol=1e-6)


def dp_reference(start, data, batches, spec, ebs, mu=0.0, corrections=None, clip=0.5):
    results = []
    for k, ((x, y), node_batches) in enumerate(zip(data, batches)):
        model = copy.deepcopy(start)
        hooks = strategy_hooks(model, mu, corrections[k] if corrections is not None else None)
        optimizer = make_optimizer(model.parameters(), spec.name, spec.lr, spec.momentum, spec.weight_decay)
        private, dp = make_private(model, optimizer, noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=ebs[k], backend="ghost")
        report = train_local_dp(private, dp, x, y, iter(node_batches), after_backward=hooks)
        results.append((model, report))
    return results


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_dp_clipping_matches_train_local_dp_without_noise(optimizer):
    """Poisson batches (empty ones included), per-node steps and expected batch sizes, FedProx and
    SCAFFOLD as post-processing: the stacked DP step equals the ghost backend's, node by node."""
    torch.manual_seed(5)
    start = MLP(6, [16])
    data = node_data(sizes=[40, 90, 12, 60], seed=5)
    for x, _ in data:
        x[:3] *= 200.0  # rows far above the clipping norm
    rate = 0.15
    steps = [6, 4, 9, 5]
    batches = [list(poisson_batches(len(y), rate, s, torch.Generator().manual_seed(k))) for k, ((_, y), s) in enumerate(zip(data, steps))]
    assert any(len(b) == 0 for node in batches for b in node)
    ebs = tuple(rate * len(y) for _, y in data)
    corrections = [{n: torch.full_like(p, 0.05 * k) for n, p in start.named_parameters()} for k in range(len(data))]
    spec = LocalOptimizer(optimizer, lr=0.01 if optimizer == "adam" else 0.1, momentum=0.5 if optimizer == "sgd" else 0.0)
    nodes = [NodeWork(x, y, b, correction=c) for (x, y), b, c in zip(data, batches, corrections)]
    stacked = train_stacked(start, nodes, spec, proximal_mu=0.2, dp=StackedDP((0.0,) * len(data), 0.5, ebs))
    assert_same(stacked, dp_reference(start, data, batches, spec, ebs, mu=0.2, corrections=corrections), start, rtol=1e-4, atol=1e-5)
    assert [r.steps for _, r in stacked] == steps


def test_dp_noise_has_the_right_scale_per_node_and_follows_the_seed():
    torch.manual_seed(6)
    start = MLP(6, [64, 64])
    data = node_data(sizes=[30, 80], seed=6)
    batches = [[torch.arange(0, 10)], [torch.arange(5, 45)]]
    ebs = (5.0, 20.0)
    spec = LocalOptimizer("sgd", lr=1.0)

    sigmas = (2.0, 1.0)  # each node's own noise multiplier

    def step(scale, seed):
        nodes = [NodeWork(x, y, b) for (x, y), b in zip(data, batches)]
        dp = StackedDP(tuple(scale * s for s in sigmas), 0.5, ebs, noise_seed=seed)
        return [flat(p.values()) for p, _ in train_stacked(start, nodes, spec, dp=dp)]

    clean, noisy, again, other = step(0.0, None), step(1.0, 7), step(1.0, 7), step(1.0, 8)
    for k in range(2):
        noise = (clean[k] - noisy[k]) * ebs[k]
        assert abs(noise.std().item() / (sigmas[k] * 0.5) - 1) < 0.05  # N(0, (σ_k C)²) on the clipped sum (~4,700 coordinates)
        torch.testing.assert_close(noisy[k], again[k])  # same seed, same noise
        assert not torch.allclose(noisy[k], other[k])
    assert not torch.allclose((clean[0] - noisy[0]) * ebs[0], (clean[1] - noisy[1]) * ebs[1])  # independent per node


def test_nodes_without_rows_take_dp_noise_only_steps():
    torch.manual_seed(9)
    start = MLP(6, [8])
    empty = NodeWork(torch.zeros(0, 6), torch.zeros(0), [torch.zeros(0, dtype=torch.long)] * 3)
    (params, report), = train_stacked(start, [empty], LocalOptimizer("sgd", 0.1), dp=StackedDP((1.0,), 0.5, (4.0,), noise_seed=0))
    assert report.steps == 3 and report.loss == 0.0
    assert not torch.allclose(flat(params.values()), flat(start.parameters()))  # noise moved the weights


def test_models_that_cannot_be_stacked_are_refused():
    assert stackable(MLP(6, [8])) and stackable(Linear(6))
    assert not stackable(MLP(6, [8], dropout=0.1))
    assert not stackable(nn.Sequential(nn.Linear(6, 1)))
    x, y = node_data(sizes=[10])[0]
    with pytest.raises(ConfigError, match="dropout"):
        train_stacked(MLP(6, [8], dropout=0.2), [NodeWork(x, y, [torch.arange(10)])], LocalOptimizer("adam", 0.01))
    with pytest.raises(ConfigError, match="train.optimizer"):
        train_stacked(MLP(6, [8]), [NodeWork(x, y, [torch.arange(10)])], LocalOptimizer("rmsprop", 0.01))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("private", [False, True])
def test_cuda_graph_replay_equals_eager_and_the_cpu_reference(private):
    torch.manual_seed(7)
    start = MLP(6, [32, 32])
    data = node_data(sizes=[300, 1000, 77], seed=7)
    if private:
        batches = [list(poisson_batches(len(y), 0.05, 12, torch.Generator().manual_seed(k))) for k, (_, y) in enumerate(data)]
        dp = StackedDP((0.0,) * 3, 0.5, tuple(0.05 * len(y) for _, y in data))
    else:
        batches = seeded_batches(data, batch_size=64, epochs=2)
        dp = None
    spec = LocalOptimizer("adam", lr=0.01)
    cpu = train_stacked(start, [NodeWork(x, y, b) for (x, y), b in zip(data, batches)], spec, dp=dp)
    gpu_model = copy.deepcopy(start).cuda()
    cuda_nodes = [NodeWork(x.cuda(), y.cuda(), b) for (x, y), b in zip(data, batches)]
    eager = train_stacked(gpu_model, cuda_nodes, spec, dp=dp)
    graphed = train_stacked(gpu_model, cuda_nodes, spec, dp=dp, cuda_graph=True)
    for (c, cr), (e, _), (g, gr) in zip(cpu, eager, graphed):
        torch.testing.assert_close(flat(g.values()), flat(e.values()), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(flat(g.values()).cpu(), flat(c.values()), rtol=1e-4, atol=1e-4)
        assert gr.steps == cr.steps and gr.loss == pytest.approx(cr.loss, rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        noisy = train_stacked(gpu_model, cuda_nodes, spec, dp=StackedDP((1.0,) * 3, 0.5, (5.0, 5.0, 5.0), noise_seed=1), cuda_graph=True) if private else None
    if noisy is not None:
        assert not torch.allclose(flat(noisy[0][0].values()), flat(graphed[0][0].values()))
