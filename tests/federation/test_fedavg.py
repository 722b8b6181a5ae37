"""Our FedAvg against Flower's built-in FedAvg on the same replies."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from strategies.fedavg import FedAvg, pooled_regression_metrics, weighted_mean


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need the run identity Flower's runtime normally sets in the process."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def reply(arrays: dict, n: int, **metrics) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": n, **metrics}),
    })
    msg = Message(content=content, dst_node_id=1, message_type="train")
    return Message(content=content, reply_to=msg)


def random_replies(seed: int, count: int = 5):
    rng = np.random.default_rng(seed)
    models = [{"w": rng.normal(size=(16, 8)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)} for _ in range(count)]
    sizes = [int(s) for s in rng.integers(10, 5000, size=count)]
    return models, sizes, [reply(m, n, train_loss=float(i)) for i, (m, n) in enumerate(zip(models, sizes))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_flower_fedavg(seed):
    models, sizes, replies = random_replies(seed)
    ours, our_metrics = FedAvg().aggregate_train(1, replies)
    theirs, their_metrics = FlowerFedAvg().aggregate_train(1, replies)
    for name in ("w", "b"):
        a, b = ours[name].numpy(), theirs[name].numpy()
        assert a.dtype == b.dtype == np.float32
        # Flower accumulates in float32, we in float64: equal to float32 rounding
        np.testing.assert_allclose(a, b, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(b).max())
        exact = sum(m[name].astype(np.float64) * n for m, n in zip(models, sizes)) / sum(sizes)
        assert np.abs(a - exact).max() <= np.abs(b - exact).max() + 1e-12  # and at least as close to exact
    assert our_metrics["train_loss"] == pytest.approx(their_metrics["train_loss"])
    assert our_metrics["num-examples"] == sum(sizes)


def test_weighting_by_examples_exact():
    out = weighted_mean([{"x": np.array([0.0])}, {"x": np.array([3.0])}], [1, 2])
    assert out["x"][0] == 2.0


def test_train_metrics_weighted_but_privacy_worst_case():
    replies = [reply({"x": np.zeros(1, np.float32)}, 100, train_loss=1.0, epsilon=0.5, delta=1e-6),
               reply({"x": np.zeros(1, np.float32)}, 300, train_loss=3.0, epsilon=4.0, delta=1e-5)]
    _, metrics = FedAvg().aggregate_train(1, replies)
    assert metrics["train_loss"] == pytest.approx(2.5)  # (100 * 1 + 300 * 3) / 400
    assert metrics["epsilon"] == 4.0 and metrics["delta"] == 1e-5  # a guarantee is only as good as its worst node
    assert metrics["num-examples"] == 400


def test_order_of_replies_does_not_matter():
    _, _, replies = random_replies(7)
    a, _ = FedAvg().aggregate_train(1, replies)
    b, _ = FedAvg().aggregate_train(1, list(reversed(replies)))
    for name in ("w", "b"):
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())


def test_server_lr_moves_part_of_the_way():
    strategy = FedAvg(server_lr=0.5)
    strategy.global_arrays = {"x": np.array([1.0], dtype=np.float32)}
    out, _ = strategy.aggregate_train(1, [reply({"x": np.array([3.0], dtype=np.float32)}, 10)])
    assert out["x"].numpy()[0] == 2.0


def test_error_replies_are_skipped():
    _, _, replies = random_replies(3, count=2)
    failed = Message(content=RecordDict(), dst_node_id=1, message_type="train")
    from flwr.app import Error

    bad = Message(Error(code=1, reason="node died"), reply_to=failed)
    out, _ = FedAvg().aggregate_train(1, replies + [bad])
    ref, _ = FedAvg().aggregate_train(1, replies)
    np.testing.assert_array_equal(out["w"].numpy(), ref["w"].numpy())
    assert FedAvg().aggregate_train(1, [bad]) == (None, None)


def test_pooled_metrics_equal_metrics_of_pooled_rows():
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=n), rng.normal(size=n)) for n in (50, 120, 300)]
    records = []
    for y, p in parts:
        records.append(MetricRecord({"num-examples": len(y), "loss": 0.0, "sse": float(((y - p) ** 2).sum()),
                                     "sum_y": float(y.sum()), "sum_y2": float((y**2).sum())}))
    pooled = pooled_regression_metrics(records)
    y = np.concatenate([a for a, _ in parts])
    p = np.concatenate([b for _, b in parts])
    assert pooled["rmse"] == pytest.approx(np.sqrt(np.mean((y - p) ** 2)), rel=1e-12)
    assert pooled["r2"] == pytest.approx(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-10)


def test_seeded_sampling_is_reproducible():
    class Grid:
        def get_node_ids(self):
            return list(range(100, 110))

    s = FedAvg(fraction_train=0.3, seed=5)
    first = s.sample(Grid(), 3, 0.3, 1, purpose=0)
    assert first == FedAvg(fraction_train=0.3, seed=5).sample(Grid(), 3, 0.3, 1, purpose=0)
    assert len(first) == 3 and set(first) <= set(range(100, 110))
    assert ConfigRecord  # records API in use
