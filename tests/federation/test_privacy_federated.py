"""DP-SGD through the real ClientApp handlers: ledger across rounds, restarts and budgets."""

import json
import math

import numpy as np
import pytest
from opacus.accountants import create_accountant

from astroscale_fl import config, run_config
from astroscale_fl.data.tasks import get_task
from astroscale_fl.deploy.split_nodes import write_node_dirs
from astroscale_fl.federation.engine import FIRST_NODE_ID
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import model_to_arrays
from astroscale_fl.federation.rounds import federated_statistics, run_rounds
from astroscale_fl.learning.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy import LEDGER_FILENAME, PrivacyLedger
from strategies import build_strategy
from tests.inprocess import InProcessGrid

DP = ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "federation.num_nodes=3",
      "task.min_parallax_snr=40", "model.widths=[16]", "train.batch_size=32"]


def setup(overrides, root):
    cfg = run_config.validate(config.compose(overrides))
    dirs = write_node_dirs(cfg, root, int(cfg.federation.num_nodes))
    grid = InProcessGrid(len(dirs), node_configs=[{"data-dir": str(d)} for d in dirs])
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=60)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(stats)
    return cfg, grid, pipeline, dirs


def rounds(cfg, grid, pipeline, first, last, arrays=None):
    arrays = arrays or model_to_arrays(build_model(cfg.model, len(pipeline.features), 0))
    return run_rounds(build_strategy(cfg), grid, arrays, last, round_config(cfg, pipeline), None, 60,
                      show_progress=False, start_round=first)


def fresh_epsilon(history, delta):
    accountant = create_accountant(mechanism="rdp")
    accountant.history = [tuple(h) for h in history]
    return accountant.get_epsilon(delta=delta)


def test_ledger_spans_rounds_partial_participation_and_restarts(tmp_path):
    overrides = DP + ["federation.fraction_train=0.67"]
    cfg, grid, pipeline, dirs = setup(overrides, tmp_path)
    arrays, _ = rounds(cfg, grid, pipeline, 1, 3)
    # "restart": new contexts (Context.state lost), the ledger files in the data dirs remain
    grid2 = InProcessGrid(len(dirs), node_configs=[{"data-dir": str(d)} for d in dirs], run_id=2)
    _, _ = rounds(cfg, grid2, pipeline, 4, 5, arrays)
    trained = {m.metadata.dst_node_id - FIRST_NODE_ID for g in (grid, grid2) for m in g.received if m.metadata.message_type == "train"}
    for i, d in enumerate(dirs):
        ledger = PrivacyLedger.load(d / ".astroscale" / LEDGER_FILENAME)
        sampled = sum(1 for g in (grid, grid2) for m in g.received
                      if m.metadata.message_type == "train" and m.metadata.dst_node_id == FIRST_NODE_ID + i)
        assert ledger.steps > 0 if i in trained else ledger.steps == 0
        q, steps = ledger.history[0][1], ledger.history[0][2]
        assert ledger.steps == sampled * math.ceil(1 / q - 1e-9)  # every round's steps counted once, merged
        assert ledger.epsilon() == pytest.approx(fresh_epsilon(ledger.history, ledger.delta), rel=1e-9)
        assert steps > 0


def test_node_at_budget_declines_and_others_continue(tmp_path):
    cfg, grid, pipeline, dirs = setup(DP + ["privacy.epsilon_budget=5.0"], tmp_path)
    # node 0 has already spent most of its budget in earlier work on the same data
    path = dirs[0] / ".astroscale" / LEDGER_FILENAME
    spent = PrivacyLedger(accountant="rdp", delta=1e-3, history=[[1.0, 0.03, 1000]])
    assert 4.9 < spent.epsilon() < 5.0
    spent.save(path)
    _, history = rounds(cfg, grid, pipeline, 1, 2)
    assert all(outcome.record.nodes_replied == 2 for outcome in history)
    # the server reads who declined, and at what ε, from the structured decline (no message parsing)
    declines = [d for outcome in history for d in outcome.declines]
    assert [d.node for d in declines] == [dirs[0].name] * 2
    assert declines[0].epsilon == pytest.approx(spent.epsilon()) and "budget" in declines[0].reason
    replies = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(replies) == 6
    after = PrivacyLedger.load(path)
    assert after.history == spent.history  # nothing spent: declined before training
    for d in dirs[1:]:
        assert PrivacyLedger.load(d / ".astroscale" / LEDGER_FILENAME).epsilon() < 5.0
    assert json.loads(json.dumps(after.to_dict()))
    assert np.isfinite(after.epsilon())


def test_run_summary_and_model_card_privacy_section(tmp_path):
    """A whole run (our ServerApp logic) with one node at its budget and one whose privacy floor refuses
    the run (max-rounds=1 < 2 rounds): the card's ε can be recomputed, the two kinds are listed apart."""
    from astroscale_fl.federation.server import run_federation

    overrides = DP + ["privacy.epsilon_budget=5.0", "federation.num_rounds=2", "federation.metrics_port=0", "output.publish=false"]
    cfg, _, _, dirs = setup(overrides, tmp_path / "nodes")
    PrivacyLedger(accountant="rdp", delta=1e-3, history=[[1.0, 0.03, 1000]]).save(dirs[0] / ".astroscale" / LEDGER_FILENAME)
    node_configs = [{"data-dir": str(d)} for d in dirs]
    node_configs[2]["max-rounds"] = 1
    grid = InProcessGrid(len(dirs), node_configs=node_configs)
    metrics = run_federation(grid, cfg, build_strategy(cfg), tmp_path / "run", show_progress=False)
    assert metrics["rounds"] == 2 and metrics["nodes_declined"] == 4
    stopped = metrics["privacy"]["stopped_nodes"]
    assert [s["node"] for s in stopped] == [dirs[0].name] and stopped[0]["first_declined_round"] == 1
    assert 4.9 < stopped[0]["epsilon"] < 5.0  # the ε the node reported when it declined
    refused = metrics["privacy"]["floor_refused_nodes"]  # not "stopped": it spent nothing
    assert [(r["node"], r["first_refused_round"], r["rounds_refused"]) for r in refused] == [(dirs[2].name, 1, 2)]
    assert "privacy floor" in refused[0]["reason"] and "max-rounds" in refused[0]["reason"]
    card = json.loads((tmp_path / "run" / "model" / "model_card.json").read_text())
    section = card["privacy"]
    assert section["name"] == "dp_sgd" and {n["node"] for n in section["nodes"]} == {dirs[1].name}
    for node in section["nodes"]:
        assert set(node) >= {"node", "accountant", "history", "delta", "epsilon"}
        assert fresh_epsilon(node["history"], node["delta"]) == pytest.approx(node["epsilon"], rel=0.01)
    assert section["max_epsilon"] == max(n["epsilon"] for n in section["nodes"])
    import pandas as pd

    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["nodes_declined"]) == [2, 2]
    assert history["max_epsilon"].iloc[-1] == pytest.approx(section["max_epsilon"])
