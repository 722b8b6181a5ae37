"""The run's privacy summary keeps floor refusals (FLOOR_REFUSED_CODE) apart from budget stops.

A whole run with both kinds: ``tests/federation/test_privacy_federated.py::test_run_summary_and_model_card_privacy_section``.
"""

from __future__ import annotations

from astroscale_fl import config, run_config
from astroscale_fl.federation.protocol import BUDGET_EXCEEDED_CODE, FLOOR_REFUSED_CODE
from astroscale_fl.federation.server import privacy_summary

DP = ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "privacy.epsilon_budget=5.0"]


def test_floor_refusals_are_listed_when_the_run_has_no_privacy():
    """privacy=none: a ``require-dp`` node refuses every round; the summary still names it."""
    cfg = run_config.validate(config.compose(["federation.num_nodes=2"]))
    declines = [{"round": r, "node": "n2", "reason": "refused by its privacy floor: it requires differential privacy",
                 "epsilon": None, "code": FLOOR_REFUSED_CODE} for r in (1, 2, 3)]
    summary = privacy_summary(cfg, [], declines, {})
    assert summary["stopped_nodes"] == [] and summary["card"] == {"name": "none"}
    assert summary["floor_refused_nodes"] == [{"node": "n2", "first_refused_round": 1, "rounds_refused": 3,
                                               "reason": declines[0]["reason"]}]


def test_a_checkpointed_decline_without_a_code_still_counts_as_a_budget_stop():
    """Declines saved by an older checkpoint carry no code: they were budget stops."""
    cfg = run_config.validate(config.compose(DP))
    old = {"round": 3, "node": "n1", "reason": "budget", "epsilon": 4.9}
    new = {"round": 4, "node": "n3", "reason": "budget", "epsilon": 4.8, "code": BUDGET_EXCEEDED_CODE}
    summary = privacy_summary(cfg, [], [old, new], {})
    assert [s["node"] for s in summary["stopped_nodes"]] == ["n1", "n3"] and summary["floor_refused_nodes"] == []
