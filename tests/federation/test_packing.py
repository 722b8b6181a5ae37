"""One Array per message on the wire (astroscale_fl.federation.packing)."""

import json

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from astroscale_fl import config
from astroscale_fl.federation import protocol
from astroscale_fl.federation.packing import (
    PACKED_RECORD,
    pack_content,
    packed_arrays_mod,
    packed_message,
    unpack_content,
    unpack_reply,
)
from astroscale_fl.federation.records import array_record, model_to_arrays, numpy_to_arrays
from astroscale_fl.learning.models import build_model


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def content_with_everything() -> RecordDict:
    rng = np.random.default_rng(0)
    return RecordDict({
        protocol.CONFIG_KEY: ConfigRecord({"server-round": 3}),
        "arrays": numpy_to_arrays({"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3),
                                   "empty": np.zeros((0, 2), np.float32), "steps": np.arange(5)}),
        protocol.METRICS_KEY: MetricRecord({"num-examples": 7}),
        "control": array_record({"c": Array(np.full((2, 2), 0.5, np.float64))}),
    })


def test_packing_round_trips_every_array_byte_for_byte_in_order():
    content = content_with_everything()
    packed = pack_content(content)
    assert list(packed.array_records) == [PACKED_RECORD] and len(packed.array_records[PACKED_RECORD]) == 1
    assert set(packed.config_records) == {protocol.CONFIG_KEY} and set(packed.metric_records) == {protocol.METRICS_KEY}
    back = unpack_content(packed)
    assert list(back.keys()) == list(content.keys())
    for key, record in content.array_records.items():
        assert list(back[key].keys()) == list(record.keys())
        for name, array in record.items():
            got = back[key][name]
            assert (got.dtype, tuple(got.shape), got.stype, got.data) == (array.dtype, tuple(array.shape), array.stype, array.data)
            np.testing.assert_array_equal(got.numpy(), array.numpy())
    assert back[protocol.CONFIG_KEY]["server-round"] == 3


def test_content_without_arrays_and_packed_content_are_left_alone():
    plain = RecordDict({protocol.CONFIG_KEY: ConfigRecord({"a": 1})})
    assert pack_content(plain) is plain and unpack_content(plain) is plain
    packed = pack_content(content_with_everything())
    assert pack_content(packed) is packed


def test_a_default_model_message_is_six_objects_instead_of_sixteen():
    """What the packing is for: every object is one request on every hop of a deployment."""
    cfg = config.compose("")
    model = build_model(cfg.model, 7, seed=0)
    message = Message(RecordDict({"arrays": model_to_arrays(model), protocol.CONFIG_KEY: ConfigRecord({"a": 1})}),
                      dst_node_id=5, message_type="train", group_id="1")
    packed = packed_message(message)
    assert len(get_all_nested_objects(message)) == 16
    assert len(get_all_nested_objects(packed)) == 6
    meta, orig = packed.metadata, message.metadata
    assert (meta.dst_node_id, meta.message_type, meta.group_id, meta.ttl) == (orig.dst_node_id, orig.message_type, orig.group_id, orig.ttl)


def with_layout(data: bytes, edit) -> bytes:
    """Packed bytes whose JSON layout ``edit`` changed in place (the array bytes kept)."""
    size = int.from_bytes(data[:8], "little")
    layout = json.loads(data[8:8 + size])
    edit(layout)
    header = json.dumps(layout).encode()
    return len(header).to_bytes(8, "little") + header + data[8 + size:]


LAYOUT_DAMAGE = {  # a hostile node's layout: each must be refused, not crash the server or drop a record
    "order drops a record": lambda layout: layout["order"].remove(protocol.METRICS_KEY),
    "order repeats a record": lambda layout: layout["order"].append("arrays"),
    "order names an unknown record": lambda layout: layout["order"].append("nowhere"),
    "negative length": lambda layout: layout["records"][0][1][0].__setitem__(4, -8),
    "length not a number": lambda layout: layout["records"][0][1][0].__setitem__(4, "8"),
}


@pytest.mark.parametrize("damage", ["truncate", "extend", "header", "stype", *LAYOUT_DAMAGE])
def test_a_malformed_packed_record_is_a_clear_error(damage):
    packed = pack_content(content_with_everything())
    array = packed[PACKED_RECORD]["arrays"]
    data, stype = array.data, array.stype
    if damage == "truncate":
        data = data[:-3]
    elif damage == "extend":
        data = data + b"xyz"
    elif damage == "header":
        data = (5).to_bytes(8, "little") + b"{oops" + data[13:]
    elif damage == "stype":
        stype = "numpy.ndarray"
    else:
        data = with_layout(data, LAYOUT_DAMAGE[damage])
    packed[PACKED_RECORD] = array_record({"arrays": Array(dtype="uint8", shape=(len(data),), stype=stype, data=data)})
    with pytest.raises(ValueError, match="astroscale.packed"):
        unpack_content(packed)


def test_the_server_turns_a_reply_it_cannot_unpack_into_a_failed_reply():
    request = packed_message(Message(content_with_everything(), dst_node_id=5, message_type="train"))
    request.metadata.__dict__["_message_id"] = request.object_id
    bad = pack_content(content_with_everything())
    bad[PACKED_RECORD] = array_record({"arrays": Array(dtype="uint8", shape=(3,), stype="astroscale.packed.v1", data=b"abc")})
    reply = unpack_reply(Message(bad, reply_to=request), request)
    assert reply.has_error() and reply.error.code == protocol.MALFORMED_PACKING_CODE
    good = unpack_reply(Message(pack_content(content_with_everything()), reply_to=request), request)
    assert "arrays" in good.content and PACKED_RECORD not in good.content


def test_the_client_mod_unpacks_for_the_handler_and_packs_its_reply():
    seen = []

    def handler(msg, context):
        seen.append(list(msg.content.keys()))
        return Message(RecordDict({"arrays": msg.content["arrays"], protocol.METRICS_KEY: MetricRecord({"n": 1})}), reply_to=msg)

    msg = packed_message(Message(content_with_everything(), dst_node_id=5, message_type="train"))
    msg.metadata.__dict__["_message_id"] = msg.object_id
    reply = packed_arrays_mod(msg, None, handler)
    assert seen == [list(content_with_everything().keys())]
    assert list(reply.content.array_records) == [PACKED_RECORD]
    assert unpack_content(reply.content)["arrays"]["w"].data == content_with_everything()["arrays"]["w"].data
    plain = Message(content_with_everything(), dst_node_id=5, message_type="train")  # sent unpacked: replied unpacked
    plain.metadata.__dict__["_message_id"] = plain.object_id
    assert "arrays" in packed_arrays_mod(plain, None, handler).content
