"""train.cuda_graph: the local step replayed from a CUDA graph trains exactly like the eager loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.learning.cuda_graphs import make_capturable, train_local_graphed
from astroscale_fl.learning.models import MLP
from astroscale_fl.learning.training import make_optimizer, shuffled_batches, train_local


def rows(n=1000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 7, generator=gen)
    return x, x[:, 0] - 0.5 * x[:, 3] + 0.1 * torch.randn(n, generator=gen)


def strategy_hooks(model, shift):
    """FedProx (mu 0.1) and SCAFFOLD (c - c_i = ``shift`` everywhere) hooks, as the ClientApp combines them."""
    server_c = {n: np.full(p.shape, shift, np.float64) for n, p in model.named_parameters()}
    node_c = {n: np.zeros(p.shape, np.float64) for n, p in model.named_parameters()}
    return objectives.combine([objectives.proximal_gradient(model, 0.1), objectives.control_correction(model, server_c, node_c)])


def test_cuda_graph_is_ignored_on_cpu():
    x, y = rows(300)
    torch.manual_seed(0)
    start = MLP(7, [16])
    out = []
    for graph in (False, True):
        model = copy.deepcopy(start)
        report = train_local(model, make_optimizer(model.parameters(), "adam", 0.01), x, y,
                             shuffled_batches(300, 64, 2, torch.Generator().manual_seed(1)), cuda_graph=graph)
        out.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), report))
    assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_graph_bookkeeping_matches_the_eager_loop_on_cpu(optimizer):
    """The static index buffer, device step counter and eager partial batches, run without a graph
    (what the graph replays on CUDA): the same steps as train_local, with strategy hooks."""
    x, y = rows(500)
    torch.manual_seed(3)
    start = MLP(7, [16, 16])
    out = []
    for loop in (train_local, train_local_graphed):
        model = copy.deepcopy(start)
        hooks = strategy_hooks(model, 0.02)
        opt = make_optimizer(model.parameters(), optimizer, 0.01, momentum=0.5 if optimizer == "sgd" else 0.0)
        report = loop(model, opt, x, y, shuffled_batches(500, 64, 3, torch.Generator().manual_seed(4)), after_backward=hooks)
        out.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), report))
    assert torch.equal(out[0][0], out[1][0])
    assert out[1][1].steps == 24 and out[0][1].loss == pytest.approx(out[1][1].loss, rel=1e-6)


def test_only_graph_safe_optimizers_are_accepted():
    model = MLP(7, [8])
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    make_capturable(adam)
    assert all(group["capturable"] for group in adam.param_groups)
    make_capturable(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="not supported"):
        make_capturable(torch.optim.RMSprop(model.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_cuda_graph_replay_matches_the_eager_loop_with_strategy_hooks(optimizer):
    """Three epochs of 1000 rows at batch 64: full batches replayed, each epoch's last (40 rows) eager;
    FedProx and SCAFFOLD hooks run inside the graph."""
    x, y = rows()
    x, y = x.cuda(), y.cuda()
    torch.manual_seed(1)
    start = MLP(7, [32, 32]).cuda()
    results = []
    for graph in (False, True):
        model = copy.deepcopy(start)
        hooks = strategy_hooks(model, 0.01)
        opt = make_optimizer(model.parameters(), optimizer, 0.01 if optimizer == "adam" else 0.05, momentum=0.5 if optimizer == "sgd" else 0.0)
        report = train_local(model, opt, x, y, shuffled_batches(1000, 64, 3, torch.Generator().manual_seed(2)),
                             after_backward=hooks, cuda_graph=graph)
        results.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), report))
    (eager, eager_report), (graphed, graphed_report) = results
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-5)  # capturable Adam: bias corrections in float32 on the device
    assert graphed_report.steps == eager_report.steps == 48
    assert graphed_report.loss == pytest.approx(eager_report.loss, rel=1e-5)
