"""The wire protocol between ServerApp and ClientApps: every record name, key and error code.

Strategies (``strategies/``), the round loop (:mod:`.rounds`), the node
(:mod:`.client`, ``clients/app.py``) and the messages helpers (:mod:`.messages`) all import
their names from here; nothing else spells a key. The module depends on Flower's records only.

A training message (server -> node)::

    RecordDict{ "arrays":  ArrayRecord   global model
                "config":  ConfigRecord  server-round, run config, pipeline, local objectives,
                                         evaluate-round (one message per round: evaluate first)
                "control": ArrayRecord   SCAFFOLD only: server control variate c }

A training reply (node -> server)::

    RecordDict{ "arrays":        ArrayRecord   the node's model
                "metrics":       MetricRecord  num-examples, train_loss | epsilon, delta
                "privacy":       ConfigRecord  DP only: the node's ledger (model card entry)
                "control-delta": ArrayRecord   SCAFFOLD only: c_i+ - c_i
                "evaluate-metrics": MetricRecord  with evaluate-round: the received model's evaluation }

or an ``Error(code=BUDGET_EXCEEDED_CODE | FLOOR_REFUSED_CODE, reason=Decline.to_reason())`` when
a node declines (DP budget spent, or the round is weaker than the node's own privacy floor).

Algorithm parameters reach the node once, typed: a strategy writes a frozen
:class:`ProximalTerm` / :class:`ScaffoldCorrection` into the round config and the node reads
them back with :func:`local_objectives` (never from the run config copy).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ConfigRecord

# -- record names in a message's RecordDict ----------------------------------------------------
ARRAYS_KEY = "arrays"  # ArrayRecord: model weights (both ways)
CONFIG_KEY = "config"  # ConfigRecord: round config (server -> node)
METRICS_KEY = "metrics"  # MetricRecord: a reply's metrics
EVAL_METRICS_KEY = "evaluate-metrics"  # MetricRecord: a training reply's evaluation of the received arrays
PRIVACY_KEY = "privacy"  # ConfigRecord: a DP reply's ledger entry
CONTROL_KEY = "control"  # ArrayRecord: SCAFFOLD server control variate
CONTROL_DELTA_KEY = "control-delta"  # ArrayRecord: SCAFFOLD node control variate change
STATS_KEY = "stats"  # ArrayRecord: statistics round, a node's column statistics
COLUMNS_KEY = "columns"  # ConfigRecord: statistics round, the statistics' column names
SECAGG_KEY = "secagg"  # ConfigRecord: SecAgg+ stage messages and a train message's relayed shares
SECAGG_WEIGHT_KEY = "secagg/weight"  # ArrayRecord: SecAgg+ masked reply, the masked weight
SECAGG_MESSAGE_TYPE = "query.secagg"  # SecAgg+ stages (setup, share-keys, unmask)

# -- keys inside the round ConfigRecord --------------------------------------------------------
SERVER_ROUND_KEY = "server-round"
EVAL_ROUND_KEY = "evaluate-round"  # one message per round: evaluate the received arrays (round r's model) first
RUN_CONFIG_KEY = "astroscale-config"  # the validated run config (JSON)
PIPELINE_KEY = "astroscale-pipeline"  # the fitted preprocessing state (JSON)
MU_KEY = "proximal-mu"  # FedProx' mu (ProximalTerm)
LOCAL_LR_KEY = "scaffold-local-lr"  # SCAFFOLD's local learning rate (ScaffoldCorrection)
COLUMN_NAMES_KEY = "names"  # inside COLUMNS_KEY

# -- keys inside reply MetricRecords -----------------------------------------------------------
WEIGHT_KEY = "num-examples"  # weights aggregation
QUARANTINED_KEY = "quarantined"  # statistics round: rows the node's validation quarantined
TRAIN_LOSS_KEY = "train_loss"
EPSILON_KEY = "epsilon"
DELTA_KEY = "delta"
# evaluation replies: sums the server pools exactly into loss, RMSE and R²
LOSS_KEY, SSE_KEY, SUM_Y_KEY, SUM_Y2_KEY = "loss", "sse", "sum_y", "sum_y2"

# -- error codes -------------------------------------------------------------------------------
#: ``Error.code`` of a train reply declined because the round would exceed the node's budget.
BUDGET_EXCEEDED_CODE = 4005
#: ``Error.code`` of a train reply refused because the round is weaker than the node's privacy floor
#: (node config, :mod:`astroscale_fl.privacy.floor`); counted as a decline like the budget's.
FLOOR_REFUSED_CODE = 4006
DECLINE_CODES = (BUDGET_EXCEEDED_CODE, FLOOR_REFUSED_CODE)
#: ``Error.code`` the server gives a reply whose packed arrays (:mod:`astroscale_fl.federation.packing`)
#: cannot be unpacked: counted as a failed reply.
MALFORMED_PACKING_CODE = 4007


@dataclass(frozen=True)
class ProximalTerm:
    """FedProx' local objective: ``loss(w) + mu/2 ||w - w_global||^2``."""

    mu: float

    def write(self, config: ConfigRecord) -> None:
        config[MU_KEY] = float(self.mu)


@dataclass(frozen=True)
class ScaffoldCorrection:
    """SCAFFOLD's local objective: plain SGD at ``local_lr`` on ``g - c_i + c``."""

    local_lr: float

    def write(self, config: ConfigRecord) -> None:
        config[LOCAL_LR_KEY] = float(self.local_lr)


@dataclass(frozen=True)
class LocalObjectives:
    """What a round asks of the node's local training beyond the plain loss."""

    proximal: ProximalTerm | None = None
    scaffold: ScaffoldCorrection | None = None


def local_objectives(config: Mapping) -> LocalObjectives:
    """The typed local objectives a round config carries."""
    return LocalObjectives(
        proximal=ProximalTerm(float(config[MU_KEY])) if MU_KEY in config else None,
        scaffold=ScaffoldCorrection(float(config[LOCAL_LR_KEY])) if LOCAL_LR_KEY in config else None,
    )


@dataclass(frozen=True)
class Decline:
    """A node refusing a training round: who, why, and the ε it has spent (structured, as JSON
    in ``Error.reason`` since a Flower ``Error`` carries only a code and a string)."""

    node: str
    reason: str
    epsilon: float | None = None
    #: the reply's ``Error.code`` (BUDGET_EXCEEDED_CODE or FLOOR_REFUSED_CODE), set by the server as it
    #: reads the reply; it travels in the Error itself, not in :meth:`to_reason`
    code: int | None = None

    def to_reason(self) -> str:
        return json.dumps({"node": self.node, "reason": self.reason, "epsilon": self.epsilon}, sort_keys=True)

    @classmethod
    def from_reason(cls, text: str) -> Decline:
        """Parse :meth:`to_reason` output; a free-text reason (another client) names node ``?``."""
        try:
            obj = json.loads(text)
            epsilon = obj.get("epsilon")
            return cls(str(obj["node"]), str(obj["reason"]),
                       None if epsilon is None or not math.isfinite(float(epsilon)) else float(epsilon))
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls("?", text)

    def __str__(self) -> str:
        return f"node {self.node} declines: {self.reason}"
