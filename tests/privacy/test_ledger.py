"""The privacy ledger: ε equals a fresh Opacus accountant over the whole step history."""

from __future__ import annotations

import json

import pytest
from flwr.app import RecordDict

from astroscale_fl.privacy import (
    LEDGER_FILENAME,
    PrivacyError,
    PrivacyLedger,
    commit_ledger,
    ledger_from_state,
    ledger_to_state,
    open_ledger,
)
from astroscale_fl.privacy.ledger import create_accountant, merge_ledgers

Q = 64 / 4400
ACCOUNTANTS = ["rdp", "prv", "gdp"]


def stepped(accountant: str, rounds) -> object:
    """An Opacus accountant stepped one DP step at a time, as DPOptimizer's hook does."""
    acc = create_accountant(accountant)
    for sigma, q, steps in rounds:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_multi_round_partial_participation_and_restart(accountant, tmp_path):
    """Rounds 1, 2, 4, 5, 7 (3 and 6 skipped), a process restart from the file after round 4."""
    sigma = 1.0
    joined = [1, 2, 4, 5, 7]
    path = tmp_path / LEDGER_FILENAME
    ledger = PrivacyLedger(accountant, 1e-4)
    for rnd in range(1, 8):
        if rnd not in joined:
            continue
        ledger.record(sigma, Q, 69)
        ledger.save(path)
        if rnd == 4:
            ledger = PrivacyLedger.load(path)  # restart
    fresh = stepped(accountant, [(sigma, Q, 69)] * len(joined))
    assert ledger.history == [tuple(h) for h in fresh.history] == [(sigma, Q, 69 * 5)]
    assert ledger.epsilon() == pytest.approx(fresh.get_epsilon(delta=1e-4), rel=1e-9)
    assert PrivacyLedger.load(path).epsilon() == pytest.approx(ledger.epsilon(), rel=1e-12)
    assert ledger.steps == 69 * 5


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_changing_parameters_make_a_multi_entry_history(accountant):
    rounds = [(1.2, Q, 30), (1.2, Q, 30), (0.8, Q, 30), (1.2, 2 * Q, 10), (1.2, 2 * Q, 5)]
    ledger = PrivacyLedger(accountant, 1e-5)
    for r in rounds:
        ledger.record(*r)
    fresh = stepped(accountant, rounds)
    assert ledger.history == [tuple(h) for h in fresh.history] == [(1.2, Q, 60), (0.8, Q, 30), (1.2, 2 * Q, 15)]
    assert ledger.epsilon() == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-9)
    # order matters for the history, not for ε: Opacus composes the entries
    assert ledger.epsilon() > PrivacyLedger(accountant, 1e-5, [(1.2, Q, 60)]).epsilon()


def test_epsilon_after_and_empty_ledger():
    ledger = PrivacyLedger("rdp", 1e-4)
    assert ledger.epsilon() == 0.0
    planned = ledger.epsilon_after(1.0, Q, 100)
    assert ledger.steps == 0  # planning does not spend
    ledger.record(1.0, Q, 100)
    assert ledger.epsilon() == pytest.approx(planned, rel=1e-12)
    ledger.record(1.0, Q, 0)
    assert ledger.history == [(1.0, Q, 100)]


def test_zero_noise_means_infinite_epsilon():
    ledger = PrivacyLedger("rdp", 1e-4, [(1.0, Q, 10)])
    ledger.record(0.0, Q, 1)
    assert ledger.epsilon() == float("inf")


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_node_at_its_budget_declines(accountant):
    ledger = PrivacyLedger(accountant, 1e-4)
    budget = PrivacyLedger(accountant, 1e-4, [(1.0, Q, 69 * 3)]).epsilon() * 1.0001  # room for 3 rounds
    for _ in range(3):
        assert ledger.budget_refusal(budget, 1.0, Q, 69) is None
        ledger.record(1.0, Q, 69)
    reason = ledger.budget_refusal(budget, 1.0, Q, 69)
    assert reason is not None and "budget" in reason and f"{budget:g}" in reason
    assert ledger.budget_refusal(None, 1.0, Q, 69) is None  # no budget: no limit
    assert ledger.epsilon() <= budget


def test_gdp_refuses_to_compose_different_parameters():
    ledger = PrivacyLedger("gdp", 1e-4, [(1.0, Q, 10)])
    with pytest.raises(PrivacyError, match="gdp"):
        ledger.record(0.9, Q, 10)
    assert "gdp" in ledger.budget_refusal(10.0, 0.9, Q, 10)


def test_serialisation_round_trips_and_rejects_garbage(tmp_path):
    ledger = PrivacyLedger("prv", 1e-3, [(1.5, 0.01, 100), (1.1, 0.01, 5)])
    assert PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict()))) == ledger
    assert PrivacyLedger.from_json(ledger.to_json()) == ledger
    path = ledger.save(tmp_path / "sub" / LEDGER_FILENAME)
    assert json.loads(path.read_text())["history"] == [[1.5, 0.01, 100], [1.1, 0.01, 5]]
    path.write_text("{not json")
    with pytest.raises(PrivacyError, match="not valid JSON"):
        PrivacyLedger.load(path)
    with pytest.raises(PrivacyError):
        PrivacyLedger.from_dict({"accountant": "rdp", "delta": 1e-3, "history": [[1.0, 2.0, 3]]})  # q > 1
    with pytest.raises(PrivacyError):
        PrivacyLedger("moments", 1e-3)


def test_state_round_trip_in_a_flower_recorddict():
    state = RecordDict()
    assert ledger_from_state(state) is None
    ledger = PrivacyLedger("rdp", 1e-4, [(1.0, Q, 69)])
    ledger_to_state(state, ledger)
    assert ledger_from_state(state) == ledger


def test_open_ledger_prefers_the_longer_copy_and_composes_forks(tmp_path):
    path = tmp_path / LEDGER_FILENAME
    state = RecordDict()
    assert open_ledger("rdp", 1e-4, state=state, path=path).history == []
    old = PrivacyLedger("rdp", 1e-4, [(1.0, Q, 69)])
    new = PrivacyLedger("rdp", 1e-4, [(1.0, Q, 138), (0.9, Q, 69)])
    commit_ledger(old, state=state)
    new.save(path)  # e.g. another run on the same data went on from the file
    assert open_ledger("rdp", 1e-4, state=state, path=path) == new
    commit_ledger(new, state=state, path=path)
    old.save(path)  # file rolled back: the state still knows
    assert open_ledger("rdp", 1e-4, state=state, path=path) == new
    fork = PrivacyLedger("rdp", 1e-4, [(1.0, Q, 69), (1.3, Q, 20)])
    merged = merge_ledgers(new, fork)
    assert merged.history == [(1.0, Q, 138), (0.9, Q, 69), (1.3, Q, 20)]  # both spends counted


def test_open_ledger_refuses_other_settings(tmp_path):
    path = tmp_path / LEDGER_FILENAME
    PrivacyLedger("rdp", 1e-4, [(1.0, Q, 69)]).save(path)
    with pytest.raises(PrivacyError, match="delta"):
        open_ledger("rdp", 1e-5, path=path)
    with pytest.raises(PrivacyError, match="accountant"):
        open_ledger("prv", 1e-4, path=path)
