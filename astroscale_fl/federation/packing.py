"""All of a message's arrays as one Array on the wire: fewer objects for Flower to move.

Flower 1.41 sends a message as a tree of objects (the message, its RecordDict, each record, each
Array and each Array's chunks), and every object is one request on every hop: ServerApp →
SuperLink → SuperNode → ClientApp and back, the SuperNode's hops signed (node authentication)
and over TLS. The default model's message is 16 objects, 12 of them its six arrays and their
chunks. Packed, it is 6: the ArrayRecords are replaced by one record holding one Array whose
bytes are a small JSON layout followed by each array's own bytes.

The ServerApp packs what it sends through a real transport (not the in-process grid, whose
messages never leave the process) and unpacks the replies (:func:`astroscale_fl.federation.rounds.send_and_receive`); the ClientApp's :func:`packed_arrays_mod`
unpacks a packed message before any handler sees it and packs the reply the same way. Strategies,
handlers and mods see the usual ArrayRecords; the arrays come back byte for byte (dtype, shape,
stype, data, names and record order kept).
"""

from __future__ import annotations

import json

from flwr.app import Array, Context, Error, Message, RecordDict

from astroscale_fl.federation.protocol import MALFORMED_PACKING_CODE
from astroscale_fl.federation.records import array_record

PACKED_RECORD = "astroscale.packed"  # the one ArrayRecord of a packed message
PACKED_ARRAY = "arrays"
PACKED_STYPE = "astroscale.packed.v1"
_HEADER_BYTES = 8  # little-endian length of the JSON layout that starts the packed bytes


def is_packed(content: RecordDict) -> bool:
    """Whether ``content`` holds packed arrays."""
    return PACKED_RECORD in content.array_records


def pack_content(content: RecordDict) -> RecordDict:
    """``content`` with all its ArrayRecords folded into one Array (other records kept as they are).
    Content without arrays, or already packed, is returned unchanged."""
    arrays = content.array_records
    if not arrays or is_packed(content):
        return content
    layout, parts = [], []
    for record_key, record in arrays.items():
        entries = []
        for name, array in record.items():
            entries.append([name, array.dtype, list(array.shape), array.stype, len(array.data)])
            parts.append(array.data)
        layout.append([record_key, entries])
    header = json.dumps({"records": layout, "order": list(content.keys())}, separators=(",", ":")).encode()
    data = b"".join([len(header).to_bytes(_HEADER_BYTES, "little"), header, *parts])
    packed = RecordDict()
    for key, record in content.items():
        if key not in arrays:
            packed[key] = record
    packed[PACKED_RECORD] = array_record({PACKED_ARRAY: Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)})
    return packed


def unpack_content(content: RecordDict) -> RecordDict:
    """The content :func:`pack_content` packed, as it was; unpacked content is returned unchanged.
    Raises ``ValueError`` on a malformed packed record."""
    if not is_packed(content):
        return content
    record = content.array_records[PACKED_RECORD]
    array = record.get(PACKED_ARRAY)
    if len(record) != 1 or array is None or array.stype != PACKED_STYPE:
        raise ValueError(f"packed record {PACKED_RECORD!r}: expected one {PACKED_STYPE} array {PACKED_ARRAY!r}")
    data = memoryview(array.data)
    try:
        size = int.from_bytes(data[:_HEADER_BYTES], "little")
        header = json.loads(bytes(data[_HEADER_BYTES:_HEADER_BYTES + size]))
        offset = _HEADER_BYTES + size
        records = {}
        for record_key, entries in header["records"]:
            unpacked = {}
            for name, dtype, shape, stype, length in entries:
                if not isinstance(length, int) or length < 0 or offset + length > len(data):
                    raise ValueError(f"array {record_key}/{name}: length {length!r} outside the data")
                unpacked[name] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=bytes(data[offset:offset + length]))
                offset += length
            records[record_key] = array_record(unpacked)
        order = header["order"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"packed record {PACKED_RECORD!r}: malformed ({exc})") from None
    if offset != len(data):
        raise ValueError(f"packed record {PACKED_RECORD!r}: {len(data) - offset} bytes past the layout")
    others = [key for key in content.keys() if key != PACKED_RECORD]
    if not isinstance(order, list) or sorted(map(str, order)) != sorted([*others, *records]) or set(records) & set(others):
        raise ValueError(f"packed record {PACKED_RECORD!r}: its record order {str(order)[:80]} does not list each record once")
    out = RecordDict()
    for key in order:
        out[key] = records[key] if key in records else content[key]
    return out


def packed_message(message: Message) -> Message:
    """A copy of an outgoing (server-built) message with its arrays packed."""
    meta = message.metadata
    return Message(pack_content(message.content), dst_node_id=meta.dst_node_id, message_type=meta.message_type,
                   ttl=meta.ttl, group_id=meta.group_id)


def unpack_reply(reply: Message, request: Message) -> Message:
    """A received reply to ``request`` with its arrays unpacked (in place), or an error reply
    (``MALFORMED_PACKING_CODE``, counted as failed) when they cannot be."""
    if reply.has_content():
        try:
            reply.content = unpack_content(reply.content)
        except ValueError as exc:
            return Message(Error(code=MALFORMED_PACKING_CODE, reason=f"node {reply.metadata.src_node_id}: {exc}"),
                           reply_to=request)
    return reply


def packed_arrays_mod(msg: Message, context: Context, call_next) -> Message:
    """ClientApp mod: unpack a packed message for the handlers, pack their reply the same way."""
    if not msg.has_content() or not is_packed(msg.content):
        return call_next(msg, context)
    msg.content = unpack_content(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = pack_content(reply.content)
    return reply
