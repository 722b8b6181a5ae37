"""The privacy record in train replies and the model card's ``privacy`` section.

Each DP train reply carries a ``ConfigRecord`` (:func:`reply_record`) with the node's name,
accountant, δ, ε so far and its whole accountant history (JSON: ConfigRecords hold no nested
lists). The server keeps the latest record per node and writes the model card section::

    "privacy": {
      "mechanism": "dp_sgd",
      "max_epsilon": 2.31,
      "nodes": [
        {"node": "band-0", "accountant": "rdp", "delta": 1e-4, "epsilon": 2.31,
         "history": [[1.1, 0.0145, 1380]]},
        ...
      ]
    }

Anyone can recompute each ε with Opacus alone (this is :func:`recompute_epsilon`)::

    from opacus.accountants import create_accountant
    acc = create_accountant(mechanism=node["accountant"])
    acc.history = [tuple(h) for h in node["history"]]
    acc.get_epsilon(delta=node["delta"])

``python -m astroscale_fl.export.verify_card model_card.json`` (or the model directory) does that for
every node, after checking the model files against the card's SHA-256.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping

from flwr.app import ConfigRecord

from astroscale_fl.privacy.ledger import PrivacyLedger


def node_entry(node: str, ledger: PrivacyLedger) -> dict:
    """The model card's record of one node."""
    return {"node": str(node), "accountant": ledger.accountant, "delta": ledger.delta, "epsilon": ledger.epsilon(), "history": [list(h) for h in ledger.history]}


def reply_record(node: str, ledger: PrivacyLedger) -> ConfigRecord:
    """The ``ConfigRecord`` a DP train reply carries under ``federation.protocol.PRIVACY_KEY``."""
    entry = node_entry(node, ledger)
    return ConfigRecord({
        "node": entry["node"], "accountant": entry["accountant"], "delta": entry["delta"],
        "epsilon": entry["epsilon"], "steps": ledger.steps, "history": json.dumps(entry["history"]),
    })


def entry_from_record(record: Mapping) -> dict:
    """A model-card node entry from a reply's privacy ``ConfigRecord``."""
    return {
        "node": str(record["node"]), "accountant": str(record["accountant"]), "delta": float(record["delta"]),
        "epsilon": float(record["epsilon"]), "history": json.loads(str(record["history"])),
    }


def _steps(entry: Mapping) -> int:
    return sum(int(n) for _, _, n in entry["history"])


def privacy_section(entries: Iterable[Mapping], mechanism: str = "dp_sgd") -> dict:
    """The model card's ``privacy`` section: the latest (most steps) entry per node, and the max ε."""
    latest: dict[str, Mapping] = {}
    for entry in entries:
        kept = latest.get(entry["node"])
        if kept is None or _steps(entry) >= _steps(kept):
            latest[entry["node"]] = entry
    nodes = [dict(latest[k]) for k in sorted(latest)]
    return {"mechanism": mechanism, "max_epsilon": max((float(n["epsilon"]) for n in nodes), default=0.0), "nodes": nodes}


def recompute_epsilon(entry: Mapping) -> float:
    """ε of a card entry by Opacus' own accountant (independent of :class:`PrivacyLedger`)."""
    from opacus.accountants import create_accountant

    if not entry["history"]:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = create_accountant(mechanism=entry["accountant"])
    acc.history = [tuple(h) for h in entry["history"]]
    return float(acc.get_epsilon(delta=float(entry["delta"])))


def recomputable_groups(section: Mapping) -> list[tuple[str, Mapping, str]]:
    """(label, sub-section, key of its largest ε) for every part of a card's privacy section that lists nodes."""
    groups = [("", section, "max_epsilon")]
    stats = section.get("preprocessing_statistics")
    if isinstance(stats, Mapping) and "nodes" in stats:
        groups.append(("preprocessing_statistics ", stats, "epsilon"))
    level = section.get("node_level")
    if isinstance(level, Mapping) and "history" in level:  # one server-side accountant for the whole federation
        groups.append(("node_level ", {"epsilon": level["epsilon"], "nodes": [{"node": "federation", **level}]}, "epsilon"))
        server = level.get("against_server")
        if isinstance(server, Mapping) and "history" in server:  # distributed DP-FedAvg: the same rounds with q = 1
            groups.append(("node_level against_server ", {"epsilon": server["epsilon"], "nodes": [{"node": "federation", **server}]},
                           "epsilon"))
    return groups


def verify_section(section: Mapping, rel_tol: float = 0.01) -> list[str]:
    """Problems found by recomputing every ε in the section (empty list: the section checks out):
    each node's lifetime ε, and the nodes of ``preprocessing_statistics`` / ``node_level``."""
    problems = []
    for label, group, top_key in recomputable_groups(section):
        for entry in group.get("nodes", []):
            claimed, actual = float(entry["epsilon"]), recompute_epsilon(entry)
            if not (math.isclose(claimed, actual, rel_tol=rel_tol) or (math.isinf(claimed) and math.isinf(actual))):
                problems.append(f"{label}node {entry['node']}: card says epsilon={claimed:.6g}, Opacus recomputes {actual:.6g}")
        top = max((float(e["epsilon"]) for e in group.get("nodes", [])), default=0.0)
        if (group.get("nodes") or not label) and not math.isclose(float(group.get(top_key, 0.0)), top, rel_tol=1e-9):
            problems.append(f"{label}{top_key}={group.get(top_key)} but the largest node epsilon is {top}")
    return problems
