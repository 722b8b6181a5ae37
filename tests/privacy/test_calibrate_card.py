"""Calibration to a target ε, settings, the model card's recomputable privacy section, DP-FedAvg."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from astroscale_fl import run_config
from astroscale_fl.config import compose, conf_dir
from astroscale_fl.export import verify_card as card_module
from astroscale_fl.privacy import (
    DpSgdSettings,
    PrivacyError,
    PrivacyLedger,
    default_delta,
    noise_for_target_epsilon,
    planned_steps,
    sample_rate,
    steps_per_round,
)
from astroscale_fl.privacy.card import (
    entry_from_record,
    node_entry,
    privacy_section,
    recompute_epsilon,
    reply_record,
    verify_section,
)
from astroscale_fl.privacy.ledger import create_accountant
from astroscale_fl.privacy.settings import dp_sgd_settings, node_level_settings

ACCOUNTANTS = ["rdp", "prv", "gdp"]


def test_default_delta_is_one_over_n_rounded_down_to_a_power_of_ten():
    assert default_delta(4400) == 1e-4
    assert default_delta(1000) == 1e-3
    assert default_delta(1001) == 1e-4
    assert default_delta(99_999) == 1e-5
    assert default_delta(2) == 0.1
    for n in (2, 9, 10, 11, 4400, 10**6, 10**6 + 1):
        assert default_delta(n) <= 1 / n < 10 * default_delta(n)
    with pytest.raises(PrivacyError):
        default_delta(1)


def test_steps_and_sample_rate():
    assert sample_rate(4400, 64) == 64 / 4400
    assert sample_rate(30, 64) == 1.0
    assert steps_per_round(4400, 64, 2) == 2 * 69
    assert planned_steps(69, 20, 1.0) == 69 * 20
    assert planned_steps(69, 20, 0.3) == 69 * 6
    assert planned_steps(69, 10, 0.25) == 69 * 3  # rounds up: never plan for fewer steps


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_calibration_hits_the_target_within_one_percent(accountant):
    q, steps, delta = 64 / 4400, 400, 1e-4
    sigma = noise_for_target_epsilon(2.0, delta, q, steps, accountant)
    acc = create_accountant(accountant)
    acc.history = [(sigma, q, steps)]
    eps = acc.get_epsilon(delta=delta)
    assert eps <= 2.0
    assert eps == pytest.approx(2.0, rel=0.01)


def test_calibration_over_a_node_life_counts_earlier_steps():
    q, delta = 0.02, 1e-4
    prior = [(1.5, q, 300)]
    sigma = noise_for_target_epsilon(3.0, delta, q, 200, "rdp", prior_history=prior)
    assert PrivacyLedger("rdp", delta, [*prior, (sigma, q, 200)]).epsilon() == pytest.approx(3.0, rel=0.01)
    assert sigma > noise_for_target_epsilon(3.0, delta, q, 200, "rdp")  # less room left: more noise
    with pytest.raises(PrivacyError, match="already spent"):
        noise_for_target_epsilon(0.1, delta, q, 200, "rdp", prior_history=prior)


def _dp_sgd(**keys) -> dict:
    """The ``privacy=dp_sgd`` section of conf/ (the settings' defaults live there alone), with ``keys`` set."""
    return {**OmegaConf.to_container(OmegaConf.load(conf_dir() / "privacy" / "dp_sgd.yaml")), **keys}


def test_settings_from_config_and_plan():
    section = _dp_sgd(target_epsilon=4.0, max_grad_norm=1.0, accountant="rdp", epsilon_budget=8.0)
    settings = DpSgdSettings.from_config(section)
    plan = settings.plan(n_rows=4400, batch_size=64, local_epochs=1, num_rounds=10, participation=0.5)
    assert (plan.steps, plan.sample_rate, plan.expected_batch_size) == (69, 64 / 4400, pytest.approx(64.0))
    total = PrivacyLedger("rdp", settings.delta_for(4400), [(plan.noise_multiplier, plan.sample_rate, 69 * 5)])
    assert total.epsilon() == pytest.approx(4.0, rel=0.01)
    fixed = DpSgdSettings.from_config(_dp_sgd(noise_multiplier=1.1, target_epsilon=None, max_grad_norm=0.5, delta=1e-6))
    assert fixed.plan(n_rows=100, batch_size=10, local_epochs=2, num_rounds=3).noise_multiplier == 1.1
    assert fixed.delta_for(100) == 1e-6
    assert DpSgdSettings.from_config({"name": "none"}) is None
    for bad in (
        _dp_sgd(max_grad_norm=1.0, target_epsilon=None),  # neither σ nor target
        _dp_sgd(max_grad_norm=1.0, noise_multiplier=1.0, target_epsilon=1.0),
        _dp_sgd(noise_multiplier=1.0, target_epsilon=None, max_grad_norm=None),  # no max_grad_norm
        _dp_sgd(noise_multiplier=1.0, target_epsilon=None, max_grad_norm=1.0, accountant="moments"),
        _dp_sgd(noise_multiplier=1.0, target_epsilon=None, max_grad_norm=1.0, delta=2),
        _dp_sgd(noise_multiplier=1.0, target_epsilon=None, max_grad_norm=1.0, budget=3),  # unknown key
        _dp_sgd(noise_multiplier="lots", target_epsilon=None, max_grad_norm=1.0),
        {"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0},  # the other keys come from conf/ only
    ):
        with pytest.raises(PrivacyError):
            DpSgdSettings.from_config(bad)


def test_settings_are_built_once_per_run_config_without_torch():
    """One frozen settings object per mechanism and run config; the run-config check imports no torch."""
    cfg = run_config.validate(compose(["privacy=dp_sgd", "privacy.noise_multiplier=1.1", "privacy.target_epsilon=null"]))
    again = run_config.validate(compose(["privacy=dp_sgd", "privacy.noise_multiplier=1.1", "privacy.target_epsilon=null"]))
    settings = dp_sgd_settings(cfg.privacy)
    assert settings is dp_sgd_settings(again.privacy) and settings.noise_multiplier == 1.1
    assert node_level_settings(cfg.privacy) is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.noise_multiplier = 2.0  # type: ignore[misc]
    node = node_level_settings(run_config.validate(compose(["privacy=dp_fedavg"])).privacy)
    assert node is node_level_settings(run_config.validate(compose(["privacy=dp_fedavg"])).privacy) and node.clipping_norm == 0.5
    code = "import sys, astroscale_fl.run_config, astroscale_fl.privacy; print(sorted({'torch', 'opacus'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=conf_dir().parent,
                         env={**os.environ, "PYTHONPATH": str(conf_dir().parent)})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_model_card_epsilon_recomputes_with_opacus(accountant, tmp_path):
    """The card's fields alone, through JSON, give Opacus' own ε within 1%."""
    histories = {"band-0": [(1.1, 0.0145, 690)], "band-1": [(1.1, 0.02, 500)] if accountant == "gdp" else [(1.1, 0.02, 300), (0.9, 0.02, 200)]}
    entries = []
    for node, history in histories.items():
        ledger = PrivacyLedger(accountant, 1e-4, history)
        record = reply_record(node, ledger)  # what travels in the reply
        entries.append(entry_from_record(record))
    entries.append(node_entry("band-0", PrivacyLedger(accountant, 1e-4, [(1.1, 0.0145, 345)])))  # an older reply
    section = privacy_section(entries)
    card = json.loads(json.dumps({"privacy": section}))["privacy"]
    assert [n["node"] for n in card["nodes"]] == ["band-0", "band-1"]
    assert card["nodes"][0]["history"] == [[1.1, 0.0145, 690]]  # the latest record per node
    for node in card["nodes"]:
        acc = create_accountant(node["accountant"])  # what anyone would do
        acc.history = [tuple(h) for h in node["history"]]
        assert node["epsilon"] == pytest.approx(acc.get_epsilon(delta=node["delta"]), rel=0.01)
        assert recompute_epsilon(node) == pytest.approx(node["epsilon"], rel=0.01)
    assert card["max_epsilon"] == max(n["epsilon"] for n in card["nodes"])
    assert verify_section(card) == []
    path = tmp_path / "model_card.json"
    path.write_text(json.dumps({"privacy": card}))
    assert card_module.main([str(path)]) == 0
    card["nodes"][1]["epsilon"] *= 0.9  # an understated ε is caught
    assert verify_section(card)
    path.write_text(json.dumps({"privacy": card}))
    assert card_module.main([str(path)]) == 1

