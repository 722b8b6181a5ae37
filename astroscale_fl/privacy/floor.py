"""An archive's own privacy floor, set in its SuperNode's node config, whatever the centre asks.

    flower-supernode ... --node-config 'data-dir="..." require-dp=true min-noise-multiplier=1.0
                                        max-epsilon=8.0 max-rounds=50'

- ``require-dp``: refuse every training round of a run without ``privacy=dp_sgd``;
- ``min-noise-multiplier``: refuse a DP round whose noise multiplier (given, or calibrated from the
  centre's ``target_epsilon``) is smaller;
- ``max-epsilon``: the node's lifetime ε cap, on top of the centre's ``privacy.epsilon_budget``
  (the smaller one applies); a round that would pass it is declined like a spent budget;
- ``max-rounds``: refuse runs configured for more rounds (``federation.num_rounds``).

A refusal is an error reply with ``FLOOR_REFUSED_CODE`` and the reason, which the server counts as a
decline. The checks run before anything is trained or spent. Evaluation and the statistics round
are not training rounds and are not refused here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from astroscale_fl.federation.protocol import Decline
from astroscale_fl.privacy.ledger import PrivacyError

KEYS = ("require-dp", "min-noise-multiplier", "max-epsilon", "max-rounds")


class FloorRefused(PrivacyError):
    """The round is weaker than this node's privacy floor (``decline``: node and reason, for the reply)."""

    def __init__(self, node: str, reason: str):
        self.decline = Decline(node, f"refused by its privacy floor: {reason}")
        super().__init__(str(self.decline))


class NodeConfigError(PrivacyError):
    """A privacy-floor key in the node config has an invalid value."""


@dataclass(frozen=True)
class PrivacyFloor:
    """The minimum privacy a node accepts (all unset: accept whatever the centre asks)."""

    require_dp: bool = False
    min_noise_multiplier: float | None = None
    max_epsilon: float | None = None
    max_rounds: int | None = None

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> PrivacyFloor:
        """Read the floor keys of a node config; a bad value raises :class:`NodeConfigError`."""
        def number(key: str, integer: bool = False) -> float | int | None:
            if key not in node_config:
                return None
            value = node_config[key]
            try:
                parsed = float(value)
            except (TypeError, ValueError):
                parsed = None
            if integer and parsed is not None:
                parsed = int(parsed) if parsed.is_integer() else None
            if isinstance(value, bool) or parsed is None or not math.isfinite(parsed) or parsed <= 0:
                kind = "a positive integer" if integer else "a positive number"
                raise NodeConfigError(f"node config {key}: expected {kind}, got {value!r}")
            return parsed

        require = node_config.get("require-dp", False)
        if isinstance(require, str) and require.lower() in ("true", "false"):
            require = require.lower() == "true"
        if not isinstance(require, bool):
            raise NodeConfigError(f"node config require-dp: expected true or false, got {require!r}")
        return cls(require_dp=require, min_noise_multiplier=number("min-noise-multiplier"),
                   max_epsilon=number("max-epsilon"), max_rounds=number("max-rounds", integer=True))

    def check_run(self, cfg, node: str) -> None:
        """Refuse a run config weaker than the floor (before any data is touched)."""
        dp = cfg.privacy.name != "none"
        if self.require_dp and not dp:
            raise FloorRefused(node, f"it requires differential privacy (node config require-dp=true) "
                                     f"and the run has privacy={cfg.privacy.name}")
        rounds = int(cfg.federation.num_rounds)
        if self.max_rounds is not None and rounds > self.max_rounds:
            raise FloorRefused(node, f"the run asks for federation.num_rounds={rounds}, "
                                     f"more than its node config max-rounds={self.max_rounds}")

    def check_noise(self, noise_multiplier: float, node: str) -> None:
        """Refuse a DP round noised less than ``min-noise-multiplier``."""
        if self.min_noise_multiplier is not None and noise_multiplier < self.min_noise_multiplier:
            raise FloorRefused(node, f"noise multiplier {noise_multiplier:.4g} is below its node config "
                                     f"min-noise-multiplier={self.min_noise_multiplier:g}")

    def budget(self, centre_budget: float | None) -> float | None:
        """The lifetime ε budget that applies: the smaller of the centre's and ``max-epsilon``."""
        if self.max_epsilon is None:
            return centre_budget
        return self.max_epsilon if centre_budget is None else min(centre_budget, self.max_epsilon)
