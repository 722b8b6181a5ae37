"""Strategy correctness: FedProx, FedAdam, SCAFFOLD (tests that fail if the algorithm is wrong)."""

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord

from astroscale_fl import config, run_config
from astroscale_fl.data.tasks import get_task
from astroscale_fl.errors import ConfigError
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import arrays_to_numpy, model_to_arrays
from astroscale_fl.federation.rounds import federated_statistics, run_rounds
from astroscale_fl.federation.strategy_params import FedProxParams
from astroscale_fl.learning.models import build_model
from astroscale_fl.preprocessing import Pipeline
from strategies import build_strategy
from strategies.fedadam import FedAdam
from strategies.fedprox import FedProx
from tests.inprocess import InProcessGrid


def federate(overrides, rounds, node_configs=None):
    """Run ``rounds`` rounds in process; return final arrays, the grid and the pipeline."""
    cfg = run_config.validate(config.compose(overrides))
    grid = InProcessGrid(int(cfg.federation.num_nodes), node_configs=node_configs)
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=60)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(stats)
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed))
    strategy = build_strategy(cfg)
    arrays, history = run_rounds(strategy, grid, model_to_arrays(model), rounds, round_config(cfg, pipeline),
                                 None, timeout=60, show_progress=False)
    return arrays_to_numpy(arrays), grid, pipeline, strategy, history


SMALL = ["federation.num_nodes=3", "model.widths=[16]", "task.min_parallax_snr=40", "partition=sky"]


def test_fedprox_with_mu_zero_is_bit_identical_to_fedavg():
    fedavg, *_ = federate(SMALL + ["strategy=fedavg"], rounds=2)
    fedprox, grid, *_ = federate(SMALL + ["strategy=fedprox", "strategy.mu=0.0"], rounds=2)
    assert any("proximal-mu" in m.content["config"] for m in grid.received if m.metadata.message_type == "train")
    for name in fedavg:
        assert np.array_equal(fedavg[name], fedprox[name]), name
    pulled, *_ = federate(SMALL + ["strategy=fedprox", "strategy.mu=1.0"], rounds=2)
    assert any(not np.array_equal(fedavg[n], pulled[n]) for n in fedavg)  # the term does act


def test_fedprox_term_pulls_towards_global_model():
    start = build_model(run_config.validate(config.compose(SMALL)).model, 13, seed=0)
    initial = {k: v.detach().numpy().copy() for k, v in start.state_dict().items()}
    dist = {}
    for mu in (0.0, 10.0):
        final, *_ = federate(SMALL + ["strategy=fedprox", f"strategy.mu={mu}"], rounds=1)
        dist[mu] = sum(float(np.sum((final[k] - initial[k]) ** 2)) for k in final)
    assert dist[10.0] < 0.5 * dist[0.0]


@pytest.mark.parametrize("bias_correction", [False, True])
def test_fedadam_server_step_equals_hand_computed_adam(bias_correction):
    strategy = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=bias_correction)
    w = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    deltas = [np.array([0.2, -0.1, 0.0]), np.array([0.1, 0.3, -0.2]), np.array([-0.05, 0.1, 0.1])]
    m = v = np.zeros(3)
    for t, delta in enumerate(deltas, start=1):
        strategy.global_arrays = {"w": w}
        new = strategy.server_step({"w": (w.astype(np.float64) + delta).astype(np.float32)})["w"]
        d = (w.astype(np.float64) + delta).astype(np.float32).astype(np.float64) - w.astype(np.float64)
        m = 0.9 * m + 0.1 * d
        v = 0.99 * v + 0.01 * d**2
        eta = 0.1 * np.sqrt(1 - 0.99**t) / (1 - 0.9**t) if bias_correction else 0.1  # Kingma & Ba's alpha_t
        expected = (w.astype(np.float64) + eta * m / (np.sqrt(v) + 1e-3)).astype(np.float32)
        np.testing.assert_array_equal(new, expected)
        w = new
    state = strategy.state_dict()
    restored = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, bias_correction=bias_correction)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.m["w"], strategy.m["w"])
    np.testing.assert_array_equal(restored.v["w"], strategy.v["w"])
    assert restored.steps == strategy.steps == 3 and restored.step_size() == strategy.step_size()


@pytest.fixture(scope="module")
def heterogeneous_least_squares(tmp_path_factory):
    """4 nodes with different optima and feature distributions (a catalog CSV, one node per value)."""
    rng = np.random.default_rng(0)
    frames = []
    for node in range(4):
        n = 400
        x = rng.normal(loc=rng.normal(0, 1.5, 3), scale=rng.uniform(0.5, 2.0, 3), size=(n, 3))
        w = rng.normal(0, 2.0, 3)
        y = x @ w + rng.normal(0, 2.0) + rng.normal(0, 0.05, n)
        frames.append(pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y, "site": f"s{node}"}))
    path = tmp_path_factory.mktemp("lsq") / "lsq.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


def pooled_optimum(grid, pipeline):
    """Minimiser of the mean over nodes of each node's mean squared error (what SCAFFOLD solves)."""
    from astroscale_fl.data.node_data import node_data
    from astroscale_fl.federation.client import node_split

    cfg_json = grid.received[0].content["config"]
    from astroscale_fl.federation.messages import read_run_config

    cfg = read_run_config(cfg_json)
    xs, ys, ws = [], [], []
    for context in grid.contexts.values():
        train, _ = node_split(cfg, node_data(cfg, context.node_config))
        x = pipeline.transform_features(train).astype(np.float64)
        xs.append(np.hstack([x, np.ones((len(x), 1))]))
        ys.append(pipeline.transform_target(train).astype(np.float64))
        ws.append(np.full(len(x), 1.0 / len(x)))
    x, y, w = np.vstack(xs), np.concatenate(ys), np.sqrt(np.concatenate(ws))
    sol, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    return np.concatenate([sol[:-1], sol[-1:]])


def lsq_overrides(path, strategy):
    return ["task=catalog", f"task.path={path}", "task.features=[a,b,c]", "task.target=y", "partition=by_column",
            "partition.column=site", "federation.num_nodes=4", "model=linear", "train.batch_size=10000",
            "train.local_epochs=20", "train.optimizer=sgd", "train.lr=0.05", "preprocess.scaling=standard", *strategy]


def test_scaffold_beats_fedavg_on_heterogeneous_least_squares(heterogeneous_least_squares):
    path = heterogeneous_least_squares
    # 10 rounds: FedAvg already sits at its drifted fixed point (error ~0.31, as after 30), SCAFFOLD ~140x closer
    fedavg, grid, pipeline, *_ = federate(lsq_overrides(path, ["strategy=fedavg"]), rounds=10)
    scaffold, *_ = federate(lsq_overrides(path, ["strategy=scaffold", "strategy.local_lr=0.05"]), rounds=10)
    optimum = pooled_optimum(grid, pipeline)
    flat = lambda arrays: np.concatenate([arrays["linear.weight"].ravel(), arrays["linear.bias"].ravel()])  # noqa: E731
    err_fedavg = np.linalg.norm(flat(fedavg) - optimum)
    err_scaffold = np.linalg.norm(flat(scaffold) - optimum)
    assert err_scaffold * 10 <= err_fedavg, (err_scaffold, err_fedavg)


def test_scaffold_partial_participation_keeps_skipped_control_variates(heterogeneous_least_squares):
    from astroscale_fl.federation.local_objectives import ControlVariateStore

    overrides = lsq_overrides(heterogeneous_least_squares, ["strategy=scaffold", "federation.fraction_train=0.5"])
    cfg = run_config.validate(config.compose(overrides))
    grid = InProcessGrid(4, node_configs=None)
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=60)
    pipeline = Pipeline.build(get_task(cfg.task), "standard").fit_statistics(stats)
    strategy = build_strategy(cfg)
    arrays: ArrayRecord = model_to_arrays(build_model(cfg.model, len(pipeline.features), 0))
    snapshots = []
    sampled_rounds = {n: [] for n in grid.get_node_ids()}
    for rnd in range(1, 7):
        before = {n: ({k: v.numpy().copy() for k, v in ctx.state[ControlVariateStore.STATE_KEY].items()}
                      if ControlVariateStore.STATE_KEY in ctx.state else None) for n, ctx in grid.contexts.items()}
        start = len(grid.received)
        arrays, _ = run_rounds(strategy, grid, arrays, rnd, round_config(cfg, pipeline), None, 60, show_progress=False,
                               start_round=rnd)
        sampled = {m.metadata.dst_node_id for m in grid.received[start:] if m.metadata.message_type == "train"}
        assert len(sampled) == 2
        for node, ctx in grid.contexts.items():
            after = ctx.state[ControlVariateStore.STATE_KEY] if ControlVariateStore.STATE_KEY in ctx.state else None
            if node not in sampled:
                if before[node] is None:
                    assert after is None
                else:  # untouched while not sampled
                    for k, v in after.items():
                        np.testing.assert_array_equal(v.numpy(), before[node][k])
            else:
                sampled_rounds[node].append(rnd)
        snapshots.append(before)
    # some node was skipped and later sampled again, continuing from its stored c_i
    assert any(len(r) >= 2 and r[-1] - r[0] >= len(r) for r in sampled_rounds.values())


def test_scaffold_reply_carries_control_delta_and_doubles_traffic(heterogeneous_least_squares):
    _, _, _, _, fedavg_hist = federate(lsq_overrides(heterogeneous_least_squares, ["strategy=fedavg"]), rounds=1)
    _, grid, _, strategy, scaffold_hist = federate(lsq_overrides(heterogeneous_least_squares, ["strategy=scaffold"]), rounds=1)
    train_msgs = [m for m in grid.received if m.metadata.message_type == "train"]
    assert all("control" in m.content.array_records for m in train_msgs)
    # model + control variate each way (evaluate messages carry only the model)
    assert scaffold_hist[0].bytes_up == 2 * fedavg_hist[0].bytes_up
    assert scaffold_hist[0].bytes_down > fedavg_hist[0].bytes_down
    assert set(strategy.state_dict()) == {"c/linear.weight", "c/linear.bias"}
    assert torch is not None


@pytest.mark.parametrize("override, message", [
    ("strategy.mu=-0.5", "strategy.mu: expected a number >= 0, got -0.5"),
    ("strategy.server_lr=0", "strategy.server_lr: expected a positive number, got 0.0"),
])
def test_strategy_ranges_are_checked_by_the_strategys_own_params(override, message):
    """One owner of a strategy's ranges: the run-config check and the strategy made in code raise the same line."""
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        run_config.validate(config.compose(["strategy=fedprox", override]))
    key, value = override.removeprefix("strategy.").split("=")
    values = {"server_lr": 1.0, "mu": 0.01, key: float(value)}
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        FedProx(**values)
    params = FedProx(server_lr=0.5, mu=0.25).hyper
    assert params == FedProxParams(0.5, 0.25) and FedProx(server_lr=0.5, mu=0.25).params() == {"server_lr": 0.5, "mu": 0.25}
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.mu = 1.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"^strategy.beta2: expected a number in \[0, 1\), got 1.0$"):
        FedAdam(server_lr=0.1, beta1=0.9, beta2=1.0, tau=1e-3, bias_correction=True)
