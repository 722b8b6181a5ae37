"""SecAgg+ on the node: the ClientApp's side of the four stages (``query.secagg`` messages and the
masked train reply). The node's keys, mask seed and the shares it holds live in its
``Context.state`` (record :data:`STATE_KEY`) for the round in progress; a stage for another
round than the one set up is refused.

1. ``setup``: two fresh SECP384R1 key pairs (pk1: pairwise masks, pk2: encrypting shares).
2. ``share-keys``: given its neighbours' public keys, a fresh 32-byte mask seed ``b``; Shamir
   shares (threshold ``t``) of ``b`` and of sk1, each encrypted for its neighbour (ECDH + Fernet).
3. train: after local training, decrypt the shares forwarded by the server, then reply with the
   masked vector (:mod:`.scheme`) instead of the model: never the update, never the count.
   Under distributed DP-FedAvg (``privacy=dp_fedavg`` with SecAgg+) the node first clips its update
   to the L2 norm C the server sent and adds its share N(0, s²) of the noise
   (:mod:`strategies.distributed_dp`); the noise comes from OS entropy, not the run's seed.
4. ``unmask``: for each neighbour that sent a masked vector, its share of ``b``; for each that
   shared keys but dropped, its share of sk1 (never both for one node).
"""

from __future__ import annotations

import os

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat, share_keys_plaintext_separate
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from astroscale_fl.errors import AstroScaleError
from astroscale_fl.federation import protocol
from astroscale_fl.federation.records import arrays_to_numpy, numpy_to_arrays
from astroscale_fl.federation.secagg.scheme import DP_CLIP, DP_STDDEV, MODULUS, WEIGHT, flatten, prg, unflatten
from astroscale_fl.privacy.node_level import clip_and_add_noise

STATE_KEY = "secaggplus"
RECORD = protocol.SECAGG_KEY  # the ConfigRecord of stage messages and of the train message
MODEL, CONTROL = protocol.ARRAYS_KEY, protocol.CONTROL_DELTA_KEY


class SecAggError(AstroScaleError):
    """A SecAgg+ stage cannot proceed on this node (the message says why)."""


def _state(context) -> ConfigRecord:
    if STATE_KEY not in context.state:
        raise SecAggError("secaggplus: no keys set up on this node for this round")
    return context.state[STATE_KEY]


def _check_round(state: ConfigRecord, record: ConfigRecord) -> None:
    if int(state["round"]) != int(record["round"]):
        raise SecAggError(f"secaggplus: message for round {record['round']}, keys set up for round {state['round']}")


def handle_stage(msg: Message, context) -> RecordDict:
    """``query.secagg``: setup, share-keys or unmask."""
    record = msg.content[RECORD]
    stage = str(record["stage"])
    if stage == "setup":
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        state = ConfigRecord({"round": int(record["round"]), "sk1": private_key_to_bytes(sk1), "sk2": private_key_to_bytes(sk2),
                              "pk1": public_key_to_bytes(pk1), "pk2": public_key_to_bytes(pk2)})
        context.state[STATE_KEY] = state
        return RecordDict({RECORD: ConfigRecord({"pk1": state["pk1"], "pk2": state["pk2"]})})
    state = _state(context)
    _check_round(state, record)
    if stage == "share-keys":
        return RecordDict({RECORD: _share_keys(state, record, context.node_id)})
    if stage == "unmask":
        return RecordDict({RECORD: _unmask(state, record)})
    raise SecAggError(f"secaggplus: unknown stage {stage!r}")


def _share_keys(state: ConfigRecord, record: ConfigRecord, me: int) -> ConfigRecord:
    nids, pk1s, pk2s = [int(n) for n in record["nids"]], list(record["pk1s"]), list(record["pk2s"])
    threshold = int(record["threshold"])
    if me not in nids or pk1s[nids.index(me)] != state["pk1"] or pk2s[nids.index(me)] != state["pk2"]:
        raise SecAggError("secaggplus: the server listed this node's public keys wrongly")
    if len(set(pk1s + pk2s)) != 2 * len(nids):
        raise SecAggError("secaggplus: neighbours' public keys are not all distinct")
    if len(nids) < threshold:
        raise SecAggError(f"secaggplus: {len(nids)} neighbours, fewer than reconstruction_threshold={threshold}")
    seed = os.urandom(32)
    seed_shares = create_shares(seed, threshold, len(nids))
    sk1_shares = create_shares(bytes(state["sk1"]), threshold, len(nids))
    sk2 = bytes_to_private_key(bytes(state["sk2"]))
    dsts, ciphertexts = [], []
    for nid, pk2, b_share, s_share in zip(nids, pk2s, seed_shares, sk1_shares, strict=True):
        if nid == me:
            own = (b_share, s_share)
            continue
        key = generate_shared_key(sk2, bytes_to_public_key(pk2))
        dsts.append(nid)
        ciphertexts.append(encrypt(key, share_keys_plaintext_concat(me, nid, b_share, s_share)))
    state["seed"] = seed
    state["pk1-nids"], state["pk1s"], state["pk2s"] = nids, pk1s, pk2s
    state["share-src"], state["seed-shares"], state["sk1-shares"] = [me], [own[0]], [own[1]]
    state["threshold"] = threshold
    return ConfigRecord({"dsts": dsts, "ciphertexts": ciphertexts})


def _receive_shares(state: ConfigRecord, record: ConfigRecord, me: int) -> list[int]:
    """Decrypt and keep the shares forwarded by the server; the neighbours they came from."""
    srcs, ciphertexts = [int(s) for s in record["srcs"]], list(record["ciphertexts"])
    if len(srcs) + 1 < int(state["threshold"]):
        raise SecAggError(f"secaggplus: shares from {len(srcs)} neighbours, fewer than reconstruction_threshold - 1")
    sk2 = bytes_to_private_key(bytes(state["sk2"]))
    nids, pk2s = [int(n) for n in state["pk1-nids"]], list(state["pk2s"])
    share_src, seed_shares, sk1_shares = list(state["share-src"]), list(state["seed-shares"]), list(state["sk1-shares"])
    for src, ciphertext in zip(srcs, ciphertexts, strict=True):
        key = generate_shared_key(sk2, bytes_to_public_key(pk2s[nids.index(src)]))
        actual_src, dst, b_share, s_share = share_keys_plaintext_separate(decrypt(key, ciphertext))
        if actual_src != src or dst != me:
            raise SecAggError(f"secaggplus: a share relayed as {src} -> {me} was made for {actual_src} -> {dst}")
        share_src.append(src)
        seed_shares.append(b_share)
        sk1_shares.append(s_share)
    state["share-src"], state["seed-shares"], state["sk1-shares"] = share_src, seed_shares, sk1_shares
    return srcs


def mask_reply(msg: Message, context, reply: RecordDict) -> RecordDict:
    """Replace a train reply by its masked form (stage 3): model (and control-variate) deltas
    weighted, quantised and masked; the weight masked as well."""
    record = msg.content[RECORD]
    state = _state(context)
    _check_round(state, record)
    me = int(context.node_id)
    available = _receive_shares(state, record, me)
    clip, q_range = float(record["clipping-range"]), int(record["quantization-range"])
    weight = float(reply[protocol.METRICS_KEY][protocol.WEIGHT_KEY]) if bool(record["weighted"]) else float(record["max-weight"])
    ratio = min(1.0, weight / float(record["max-weight"]))
    q_ratio = max(1, round(ratio * q_range))
    global_arrays = arrays_to_numpy(msg.content[MODEL])
    model = arrays_to_numpy(reply[MODEL])
    parts = {f"{MODEL}/{k}": model[k].astype(np.float64) - global_arrays[k].astype(np.float64) for k in global_arrays}
    if CONTROL in reply.array_records:
        parts.update({f"{CONTROL}/{k}": v for k, v in arrays_to_numpy(reply[CONTROL]).items()})
    update = flatten(parts)
    if DP_CLIP in record.keys():  # distributed DP-FedAvg: clip and add this node's share of the noise before masking
        update = clip_and_add_noise(update, float(record[DP_CLIP]), float(record[DP_STDDEV]), np.random.default_rng())
    quantized = quantize([update * (q_ratio / q_range)], clip, q_range)[0].astype(np.int64)
    vector = np.concatenate([np.array([q_ratio], np.int64), quantized])
    vector += prg(bytes(state["seed"]), vector.size)
    sk1 = bytes_to_private_key(bytes(state["sk1"]))
    nids, pk1s = [int(n) for n in state["pk1-nids"]], list(state["pk1s"])
    for other in available:
        mask = prg(generate_shared_key(sk1, bytes_to_public_key(pk1s[nids.index(other)])), vector.size)
        vector = vector + mask if me > other else vector - mask
    vector &= MODULUS - 1
    masked = unflatten(vector[1:], {k: np.empty(np.shape(v)) for k, v in parts.items()})
    out = RecordDict({WEIGHT: numpy_to_arrays({"w": vector[:1]}),
                      MODEL: numpy_to_arrays({k.split("/", 1)[1]: v for k, v in masked.items() if k.startswith(MODEL + "/")})})
    if CONTROL in reply.array_records:
        out[CONTROL] = numpy_to_arrays({k.split("/", 1)[1]: v for k, v in masked.items() if k.startswith(CONTROL + "/")})
    for name, config in reply.config_records.items():  # e.g. the node's DP ledger record: public by design
        out[name] = config
    if protocol.EVAL_METRICS_KEY in reply.metric_records:  # folded evaluation: released as a separate evaluate reply would be
        out[protocol.EVAL_METRICS_KEY] = reply[protocol.EVAL_METRICS_KEY]
    return out


def _unmask(state: ConfigRecord, record: ConfigRecord) -> ConfigRecord:
    active, dead = [int(n) for n in record["active"]], [int(n) for n in record["dead"]]
    if set(active) & set(dead):
        raise SecAggError("secaggplus: the server asked for both shares of one node")
    held = {int(s): i for i, s in enumerate(state["share-src"])}
    nids, shares = [], []
    for nid in active:
        if nid in held:
            nids.append(nid)
            shares.append(state["seed-shares"][held[nid]])
    for nid in dead:
        if nid in held:
            nids.append(nid)
            shares.append(state["sk1-shares"][held[nid]])
    return ConfigRecord({"nids": nids, "shares": shares})

