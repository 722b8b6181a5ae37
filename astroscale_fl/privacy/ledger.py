"""A node's lifetime privacy ledger: the history of its DP-SGD steps and the ε they cost.

The ledger is the node's Opacus accountant state, nothing more: the accountant's name
(``rdp``, ``prv``, ``gdp``), the δ at which ε is reported, and the accountant's history
``[[noise_multiplier, sample_rate, steps], ...]`` with consecutive identical entries merged
exactly as Opacus' accountants merge them. ε is always recomputed by a *fresh* Opacus
accountant whose ``history`` is set to the ledger's, so anyone holding these three fields
can check it (:func:`epsilon_of` is that recomputation).

It lives in two places that :func:`open_ledger` / :func:`commit_ledger` keep in step:

- the node's Flower ``Context.state`` (a ``ConfigRecord`` holding the JSON), which persists
  across rounds of one run;
- in deployment, a JSON file in the node's data directory (:data:`LEDGER_FILENAME`), written
  atomically, which survives SuperNode restarts and new runs on the same data.

If the two disagree, the longer wins when one extends the other; if they forked (two
processes trained on the same rows), their spends are composed (common prefix + both
suffixes): over-counting is safe, under-counting is not.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from astroscale_fl.atomic import write_json
from astroscale_fl.errors import AstroScaleError

ACCOUNTANTS = ("rdp", "prv", "gdp")
LEDGER_FILENAME = "privacy-ledger.json"
STATE_KEY = "privacy-ledger"
FORMAT = "astroscale-privacy-ledger/1"
MAX_SIGMA = 1e6  # as Opacus' get_noise_multiplier

Entry = tuple[float, float, int]


class PrivacyError(AstroScaleError):
    """The privacy ledger or settings cannot be used as asked (the message says why)."""


def check_accountant(name: str) -> str:
    """``name`` if it is an accountant we support; the one place accountant names are checked."""
    if name not in ACCOUNTANTS:
        raise PrivacyError(f"privacy.accountant: expected one of {list(ACCOUNTANTS)}, got {name!r}")
    return name


def create_accountant(name: str):
    """A fresh Opacus accountant (``rdp``, ``prv`` or ``gdp``; gdp's experimental warning muted)."""
    from opacus.accountants import create_accountant as opacus_create

    check_accountant(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return opacus_create(mechanism=name)


def epsilon_of(accountant: str, history: Sequence[Sequence[float]], delta: float) -> float:
    """ε of ``history`` at ``delta`` by a fresh Opacus accountant; 0 for an empty history."""
    entries = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not entries:
        return 0.0
    if any(s <= 0 for s, _, _ in entries):
        return math.inf  # a step without noise has no finite ε
    if accountant == "gdp" and len({(s, q) for s, q, _ in entries}) > 1:
        raise PrivacyError("privacy: the gdp accountant cannot compose steps with different noise multipliers or sample rates; use rdp or prv")
    acc = create_accountant(accountant)
    acc.history = entries
    return float(acc.get_epsilon(delta=delta))


def _append(history: list[Entry], noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Append like Opacus' ``accountant.step`` repeated ``steps`` times (merge with an identical last entry)."""
    if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
        history[-1] = (noise_multiplier, sample_rate, history[-1][2] + steps)
    else:
        history.append((noise_multiplier, sample_rate, steps))


def _expand_prefix(a: Sequence[Entry], b: Sequence[Entry]) -> int:
    """Number of leading steps ``a`` and ``b`` share."""
    shared = 0
    for (sa, qa, na), (sb, qb, nb) in zip(a, b):
        if (sa, qa) != (sb, qb):
            break
        shared += min(na, nb)
        if na != nb:
            break
    return shared


def _drop_steps(history: Sequence[Entry], steps: int) -> list[Entry]:
    """``history`` without its first ``steps`` steps."""
    rest: list[Entry] = []
    for s, q, n in history:
        if steps >= n:
            steps -= n
            continue
        rest.append((s, q, n - steps))
        steps = 0
    return rest


@dataclass
class PrivacyLedger:
    """One node's privacy state: accountant, δ and the full step history of its life."""

    accountant: str = "rdp"
    delta: float = 1e-5
    history: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_accountant(self.accountant)
        if not 0.0 < float(self.delta) < 1.0:
            raise PrivacyError(f"privacy.delta: expected a number in (0, 1), got {self.delta}")
        self.delta = float(self.delta)
        entries, self.history = list(self.history), []
        for entry in entries:
            if len(entry) != 3:
                raise PrivacyError(f"privacy ledger: expected [noise_multiplier, sample_rate, steps] entries, got {entry!r}")
            self.record(*entry)

    @property
    def steps(self) -> int:
        """DP steps taken over the node's life."""
        return sum(n for _, _, n in self.history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Account for ``steps`` DP-SGD steps with this noise multiplier and sample rate."""
        noise_multiplier, sample_rate = float(noise_multiplier), float(sample_rate)
        if steps != int(steps) or int(steps) < 0:
            raise PrivacyError(f"privacy ledger: steps must be a non-negative integer, got {steps!r}")
        steps = int(steps)
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise PrivacyError(f"privacy ledger: noise multiplier must be finite and >= 0, got {noise_multiplier}")
        if not 0.0 < sample_rate <= 1.0:
            raise PrivacyError(f"privacy ledger: sample rate must be in (0, 1], got {sample_rate}")
        if steps == 0:
            return
        if self.accountant == "gdp" and self.history and self.history[-1][:2] != (noise_multiplier, sample_rate):
            s, q, _ = self.history[-1]
            raise PrivacyError(
                f"privacy: the gdp accountant needs a constant noise multiplier and sample rate; this node's ledger "
                f"has ({s}, {q}) and the round asks for ({noise_multiplier}, {sample_rate}); use rdp or prv"
            )
        _append(self.history, noise_multiplier, sample_rate, steps)

    def epsilon(self) -> float:
        """ε spent so far at this ledger's δ (fresh Opacus accountant over the whole history)."""
        return epsilon_of(self.accountant, self.history, self.delta)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε the node would have spent after a planned round of ``steps`` steps."""
        planned = self.copy()
        planned.record(noise_multiplier, sample_rate, steps)
        return planned.epsilon()

    def budget_refusal(self, epsilon_budget: float | None, noise_multiplier: float, sample_rate: float, steps: int) -> str | None:
        """Why the planned round must be declined under ``epsilon_budget``, or ``None`` if it fits."""
        if epsilon_budget is None:
            return None
        spent = self.epsilon()
        try:
            after = self.epsilon_after(noise_multiplier, sample_rate, steps)
        except PrivacyError as exc:
            return str(exc)
        if after > epsilon_budget:
            return (
                f"privacy budget: this node has spent epsilon={spent:.4g} (delta={self.delta:g}, {self.accountant}) of its "
                f"lifetime budget {epsilon_budget:g}; this round ({steps} steps, noise multiplier {noise_multiplier:.4g}, "
                f"sample rate {sample_rate:.4g}) would take it to {after:.4g}, so it declines"
            )
        return None

    def copy(self) -> PrivacyLedger:  # noqa: D102
        return PrivacyLedger(self.accountant, self.delta, list(self.history))

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready form (``history`` as Opacus' accountant history: ``[[σ, q, steps], ...]``)."""
        return {"format": FORMAT, "accountant": self.accountant, "delta": self.delta, "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, obj: dict) -> PrivacyLedger:  # noqa: D102
        if not isinstance(obj, dict) or obj.get("format", FORMAT) != FORMAT:
            raise PrivacyError(f"privacy ledger: expected format {FORMAT!r}, got {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r}")
        try:
            return cls(str(obj["accountant"]), float(obj["delta"]), [tuple(h) for h in obj["history"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"privacy ledger: malformed ({exc})") from None

    def to_json(self) -> str:  # noqa: D102
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:  # noqa: D102
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PrivacyError(f"privacy ledger: not valid JSON ({exc})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ledger atomically as JSON."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Read a ledger written by :meth:`save`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PrivacyError(f"privacy ledger {path}: cannot read ({exc.strerror})") from None
        try:
            return cls.from_json(text)
        except PrivacyError as exc:
            raise PrivacyError(f"{path}: {exc}") from None


def merge_ledgers(a: PrivacyLedger, b: PrivacyLedger) -> PrivacyLedger:
    """The conservative union of two copies of one node's ledger.

    If one history extends the other, the longer one; otherwise the shared prefix followed by
    both divergent suffixes (each spend counted once, never lost). Histories record parameters,
    not identities: two forks that took the same number of steps with the same parameters look
    like one. In deployment keep one process per data directory.
    """
    if (a.accountant, a.delta) != (b.accountant, b.delta):
        raise PrivacyError(f"privacy ledger: copies disagree on accountant/delta ({a.accountant}, {a.delta:g}) vs ({b.accountant}, {b.delta:g})")
    shared = _expand_prefix(a.history, b.history)
    merged = a.copy()
    for s, q, n in _drop_steps(b.history, shared):
        merged.record(s, q, n)
    return merged


def ledger_from_state(state: RecordDict, key: str = STATE_KEY) -> PrivacyLedger | None:
    """The ledger kept in a Flower ``Context.state``, or ``None`` if there is none."""
    if key not in state:
        return None
    return PrivacyLedger.from_json(str(state[key]["ledger"]))  # type: ignore[index]


def ledger_to_state(state: RecordDict, ledger: PrivacyLedger, key: str = STATE_KEY) -> None:
    """Keep ``ledger`` in a Flower ``Context.state`` (a ``ConfigRecord`` holding its JSON)."""
    state[key] = ConfigRecord({"ledger": ledger.to_json()})


def open_ledger(
    accountant: str,
    delta: float,
    *,
    state: RecordDict | None = None,
    path: str | os.PathLike[str] | None = None,
    key: str = STATE_KEY,
) -> PrivacyLedger:
    """The node's ledger from its state and/or ledger file (a new, empty one if neither has it).

    A ledger kept with another accountant or δ is refused: the node's promise was made with
    those; move the file away deliberately to start a new promise.
    """
    found: list[tuple[str, PrivacyLedger]] = []
    if state is not None and (kept := ledger_from_state(state, key)) is not None:
        found.append(("the node's state", kept))
    if path is not None and Path(path).exists():
        found.append((str(path), PrivacyLedger.load(path)))
    for where, kept in found:
        if kept.accountant != accountant or not math.isclose(kept.delta, float(delta), rel_tol=1e-12):
            raise PrivacyError(
                f"privacy ledger in {where} was kept with accountant {kept.accountant!r}, delta {kept.delta:g}; "
                f"the config asks for {accountant!r}, delta {float(delta):g}: use the ledger's settings"
            )
    if not found:
        return PrivacyLedger(accountant, delta)
    ledger = found[0][1]
    for _, other in found[1:]:
        ledger = merge_ledgers(ledger, other)
    return ledger


def commit_ledger(ledger: PrivacyLedger, *, state: RecordDict | None = None, path: str | os.PathLike[str] | None = None, key: str = STATE_KEY) -> None:
    """Write ``ledger`` to the node's state and (atomically) to its ledger file."""
    if path is not None:
        ledger.save(path)
    if state is not None:
        ledger_to_state(state, ledger, key)

