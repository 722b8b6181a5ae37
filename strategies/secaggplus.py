"""SecAgg+ on the server (``federation.secure_aggregation=secaggplus``), around any of our strategies.

Per training round (Bell et al. 2020, Flower's legacy ``SecAggPlusWorkflow`` stages, on our round loop):

1. the wrapped strategy samples nodes and builds its train messages (nothing sent yet);
2. ``setup``: each sampled node sends two public keys;
3. ``share-keys``: each node gets its neighbours' keys (a shuffled ring of ``num_shares``) and
   returns Shamir shares of its mask seed and key, encrypted for each neighbour;
4. train: the strategy's messages go out, each with the shares addressed to that node; nodes reply
   with masked vectors only (:mod:`astroscale_fl.federation.secagg.node`);
5. ``unmask``: surviving nodes send the shares that remove the masks (seeds of nodes that replied,
   keys of nodes that dropped after sharing); the server sums, unmasks, dequantises and hands the
   wrapped strategy only the weighted mean update (:func:`strategies.mean_step.apply_mean_update`):
   FedAvg/FedProx weight by examples (masked weight and weighted sum), FedAdam steps on the mean,
   SCAFFOLD averages model and control-variate deltas unweighted.

A stage where fewer than ``reconstruction_threshold`` nodes (or shares) remain fails the round
with a :class:`FederationError` that counts who was sampled, who replied at each stage and which
secret lacked shares. The wrapped strategy's ``aggregate_train`` is never called: it would need
the individual replies.

What it assumes: an honest-but-curious server (it relays keys faithfully; a malicious server that
forges the key lists could isolate a node, which needs signed keys / a PKI, not done here), fewer
than ``reconstruction_threshold`` colluding nodes among any node's neighbours. With
``privacy=dp_fedavg`` it runs under :class:`strategies.distributed_dp.DistributedDpFedAvg`, which
sets :attr:`SecAggPlus.node_dp` (nodes clip and add their noise share; unweighted) and takes the
unmasked sum from :meth:`SecAggPlus.unmasked_sum`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from astroscale_fl.federation.protocol import SECAGG_MESSAGE_TYPE, WEIGHT_KEY
from astroscale_fl.federation.records import arrays_to_numpy, numpy_to_arrays
from astroscale_fl.federation.rounds import FederationError, send_and_receive
from astroscale_fl.federation.secagg.node import CONTROL, MODEL, RECORD
from astroscale_fl.federation.secagg.scheme import (
    MODULUS,
    WEIGHT,
    SecAggPlusParams,
    flatten,
    neighbours,
    prg,
    unflatten,
)
from strategies.fedavg import FedAvg
from strategies.mean_step import apply_mean_update
from strategies.scaffold import Scaffold

STAGE_TYPE = SECAGG_MESSAGE_TYPE
MODEL_PART, CONTROL_PART = "model/", "control/"  # prefixes of the unmasked sums' keys


def payload_nbytes(content: RecordDict) -> int:
    """Bytes of a message's arrays and config values (keys, shares, ciphertexts)."""
    total = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    for rec in content.config_records.values():
        for value in rec.values():
            for item in value if isinstance(value, list) else [value]:
                total += len(item) if isinstance(item, (bytes, str)) else 8
    return int(total)


def split_sums(sums: dict[str, np.ndarray], divisor: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The unmasked sums divided by ``divisor``: model deltas, and control-variate deltas (or None)."""
    model = {k[len(MODEL_PART):]: v / divisor for k, v in sums.items() if k.startswith(MODEL_PART)}
    control = {k[len(CONTROL_PART):]: v / divisor for k, v in sums.items() if k.startswith(CONTROL_PART)}
    return model, control or None


@dataclass
class _Round:
    """What the server keeps between the stages of one round."""

    number: int
    sampled: list[int]
    graph: dict[int, list[int]]
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    shared: list[int] = field(default_factory=list)  # nodes that distributed their shares
    available: dict[int, list[int]] = field(default_factory=dict)  # node -> neighbours whose shares it got


class SecAggPlus(Strategy):
    """Secure aggregation of a FedAvg-family strategy's training round."""

    def __init__(self, strategy: FedAvg, params: SecAggPlusParams, timeout: float, rng: np.random.Generator | None = None) -> None:
        self.strategy = strategy
        self.secagg = params
        self.timeout = float(timeout)
        self.weighted = not isinstance(strategy, Scaffold)
        self.rng = rng or np.random.default_rng()
        self.protocol_bytes: list[int] = []  # per round: stage messages and share relays, both ways
        self._grid: Grid | None = None
        self._round: _Round | None = None
        self._bytes = 0
        self.error_bound = float("nan")  # quantisation error bound of the last round's mean, per coordinate
        self.sum_error_bound = float("nan")  # ... of the last round's unmasked sum
        self.node_dp: dict | None = None  # distributed DP-FedAvg: {DP_CLIP: C, DP_STDDEV: s} for the nodes, set per round
        self.min_contributions = 0  # unmask only when at least this many masked vectors arrived (distributed DP: m)

    def __getattr__(self, name: str):
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def params(self) -> dict:
        """The wrapped strategy's parameters (the card records SecAgg+'s own under ``secaggplus``)."""
        return self.strategy.params()

    def summary(self) -> None:
        log(INFO, "SecAgg+ (%s) around:", self.secagg.as_dict())
        self.strategy.summary()

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.strategy.load_state_dict(state)

    # -- stages -------------------------------------------------------------------------------

    def _stage(self, nodes: list[int], stage: str, body: Callable[[int], dict]) -> dict[int, ConfigRecord]:
        assert self._grid is not None and self._round is not None
        messages = [Message(RecordDict({RECORD: ConfigRecord({"stage": stage, "round": self._round.number, **body(n)})}),
                            message_type=STAGE_TYPE, dst_node_id=n) for n in nodes]
        self._bytes += sum(payload_nbytes(m.content) for m in messages)
        replies, _ = send_and_receive(self._grid, messages, self.timeout)
        out = {}
        for reply in replies:
            if reply.has_error():
                log(INFO, "secaggplus %s: node %s failed: %s", stage, reply.metadata.src_node_id, reply.error.reason)
                continue
            self._bytes += payload_nbytes(reply.content)
            out[int(reply.metadata.src_node_id)] = reply.content[RECORD]
        return out

    def _fail(self, what: str) -> None:
        r = self._round
        assert r is not None
        raise FederationError(f"round {r.number}: secaggplus: {what} (reconstruction_threshold={self.secagg.reconstruction_threshold}; "
                              f"{len(r.sampled)} sampled, {len(r.keys)} sent keys, {len(r.shared)} shared keys)")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample (wrapped strategy), exchange keys and shares, then the train messages with each node's shares."""
        self._grid, self._bytes = grid, 0
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        sampled = sorted(int(m.metadata.dst_node_id) for m in messages)
        t = self.secagg.reconstruction_threshold
        r = self._round = _Round(server_round, sampled, {})
        r.keys = {n: (bytes(rec["pk1"]), bytes(rec["pk2"])) for n, rec in self._stage(sampled, "setup", lambda n: {}).items()}
        if len(r.keys) < t:
            self._fail(f"{len(r.keys)} nodes sent keys, fewer than the threshold")
        r.graph = neighbours(sorted(r.keys), self.secagg.num_shares, self.rng)

        def share_body(n: int) -> dict:
            nids = r.graph[n]
            return {"nids": nids, "pk1s": [r.keys[v][0] for v in nids], "pk2s": [r.keys[v][1] for v in nids], "threshold": t}

        relayed: dict[int, list[tuple[int, bytes]]] = {n: [] for n in r.keys}
        replies = self._stage(sorted(r.keys), "share-keys", share_body)
        for src, rec in replies.items():
            for dst, ciphertext in zip(rec["dsts"], rec["ciphertexts"], strict=True):
                if int(dst) in replies:
                    relayed[int(dst)].append((src, bytes(ciphertext)))
        r.shared = sorted(replies)
        r.available = {n: [s for s, _ in relayed[n]] for n in r.shared}
        short = sorted(n for n in r.shared if len(r.available[n]) + 1 < t)
        if len(r.shared) < t or short:
            self._fail(f"nodes {short or r.shared} hold shares from fewer than {t} nodes (themselves included)")
        out = []
        for m in messages:
            node = int(m.metadata.dst_node_id)
            if node not in r.available:
                continue
            content = RecordDict(dict(m.content.items()))
            content[RECORD] = ConfigRecord({
                "round": server_round, "srcs": [s for s, _ in relayed[node]], "ciphertexts": [c for _, c in relayed[node]],
                "weighted": self.weighted and self.node_dp is None, **(self.node_dp or {}), "clipping-range": self.secagg.clipping_range,
                "quantization-range": self.secagg.quantization_range, "max-weight": self.secagg.max_weight})
            self._bytes += payload_nbytes(RecordDict({RECORD: content[RECORD]}))
            out.append(Message(content=content, message_type=m.metadata.message_type, dst_node_id=node))
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the masked vectors, collect the unmasking shares, remove the masks, step the wrapped strategy."""
        total, weight, metrics = self.unmasked_sum(server_round, replies)
        model_delta, control_delta = split_sums(total, weight)
        active = int(metrics["secagg-nodes"])
        share = active / max(self.strategy.num_nodes, active) if isinstance(self.strategy, Scaffold) else 1.0
        new = apply_mean_update(self.strategy, model_delta, control_delta, share)
        self.error_bound = self.sum_error_bound / weight
        if self.weighted:
            metrics[WEIGHT_KEY] = int(round(weight * self.secagg.max_weight))  # the sum only
        return numpy_to_arrays(new), MetricRecord(metrics)

    def unmasked_sum(self, server_round: int, replies: Iterable[Message]) -> tuple[dict[str, np.ndarray], float, dict]:
        """The unmasked sums ``Σ w̃_k Δ_k`` (keys ``model/…``, ``control/…``; float64), ``Σ w̃_k`` (1 per node
        when unweighted) and the round's SecAgg+ metrics. Never one node's update."""
        r = self._round
        assert r is not None and r.number == server_round
        valid = {int(m.metadata.src_node_id): m for m in replies if not m.has_error()}
        active = sorted(n for n in valid if n in r.available)
        dead = sorted(set(r.shared) - set(active))
        t = self.secagg.reconstruction_threshold
        if len(active) < t:
            self._fail(f"{len(active)} masked vectors arrived, fewer than the threshold ({len(dead)} dropped after sharing)")
        if len(active) < self.min_contributions:
            self._fail(f"{len(active)} masked vectors arrived, fewer than the {self.min_contributions} whose noise shares make "
                       f"the node-level noise ({len(dead)} dropped after sharing); nothing unmasked")
        shares: dict[int, list[bytes]] = {n: [] for n in r.shared}
        body = lambda n: {"active": [v for v in r.graph[n] if v in active], "dead": [v for v in r.graph[n] if v in dead]}  # noqa: E731
        for rec in self._stage(active, "unmask", body).values():
            for owner, share in zip(rec["nids"], rec["shares"], strict=True):
                shares[int(owner)].append(bytes(share))
        first = valid[active[0]].content
        layout = {MODEL_PART + k: v for k, v in arrays_to_numpy(first[MODEL]).items()}
        if CONTROL in first.array_records:
            layout.update({CONTROL_PART + k: v for k, v in arrays_to_numpy(first[CONTROL]).items()})
        total = np.zeros(1 + flatten(layout).size, np.int64)
        for node in active:
            content = valid[node].content
            parts = [content[WEIGHT]["w"].numpy().astype(np.int64), flatten(arrays_to_numpy(content[MODEL]), np.int64)]
            if CONTROL in content.array_records:
                parts.append(flatten(arrays_to_numpy(content[CONTROL]), np.int64))
            total += np.concatenate(parts)
        total = self._unmask(total, active, dead, shares)
        q_range, clip = self.secagg.quantization_range, self.secagg.clipping_range
        weighted_sum = dequantize([total[1:]], clip, q_range)[0] - (len(active) - 1) * clip
        self.protocol_bytes.append(self._bytes)
        self.sum_error_bound = len(active) * 2.0 * clip / q_range  # stochastic rounding: < one step per node and coordinate
        metrics = {"secagg-nodes": len(active), "secagg-dropped": len(dead), "secagg-protocol-bytes": self._bytes}
        return unflatten(weighted_sum, layout), int(total[0]) / q_range, metrics

    def _unmask(self, total: np.ndarray, active: list[int], dead: list[int], shares: dict[int, list[bytes]]) -> np.ndarray:
        r = self._round
        assert r is not None
        t = self.secagg.reconstruction_threshold
        for node in active:
            if len(shares[node]) < t:
                self._fail(f"node {node}'s mask seed has {len(shares[node])} shares from the {len(active)} surviving nodes")
            total -= prg(combine_shares(shares[node]), total.size)
        for node in dead:
            holders = [v for v in active if node in r.available.get(v, [])]
            if not holders:
                continue
            if len(shares[node]) < t:
                self._fail(f"dropped node {node}'s key has {len(shares[node])} shares from the {len(active)} surviving nodes")
            sk1 = bytes_to_private_key(combine_shares(shares[node]))
            for v in holders:  # v added +mask(v, node) if v > node, else -mask
                mask = prg(generate_shared_key(sk1, bytes_to_public_key(r.keys[v][0])), total.size)
                total = total - mask if v > node else total + mask
        return total & (MODULUS - 1)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
