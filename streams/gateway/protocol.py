"""The WebSocket protocol's client messages, parsed and checked without I/O.

Client -> gateway, one JSON object per text frame::

    {"op": "subscribe", "room": "candles:BTCUSDT:1m", "id": 1}
    {"op": "subscribe", "room": "candles:BTCUSDT:1m", "since": 41, "epoch": "5f0c...", "id": 2}
    {"op": "unsubscribe", "room": "candles:BTCUSDT:1m", "id": 3}
    {"op": "ping", "id": 4}

``rooms`` (a list) may replace ``room``. Gateway -> client: ``subscribed`` / ``unsubscribed`` acks
echoing ``id``, ``message`` frames (``room``, ``seq``, ``channel``, ``data``), ``heartbeat`` and
``pong``, and ``error`` with a ``code`` and a ``message`` naming what was wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import orjson

MAX_FRAME_BYTES = 4096
MAX_ROOMS_PER_MESSAGE = 50
OPS = ("subscribe", "unsubscribe", "ping")


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str, request_id: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Command:
    op: str
    rooms: tuple[str, ...] = ()
    since: int | None = None
    epoch: str | None = None
    request_id: int | str | None = None


def parse_command(frame: str | bytes) -> Command:
    """A client frame as a :class:`Command`, or :class:`ProtocolError` saying what is wrong."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"message of {len(frame)} bytes; the limit is {MAX_FRAME_BYTES}")
    try:
        doc = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("bad_message", "a message is a JSON object such as {\"op\": \"subscribe\", \"room\": \"candles:BTCUSDT:1m\"}")
    rid = doc.get("id")
    if rid is not None and not (isinstance(rid, (int, str)) and not isinstance(rid, bool) and len(str(rid)) <= 64):
        raise ProtocolError("bad_message", "id must be an integer or a string of at most 64 characters")
    op = doc.get("op")
    if op not in OPS:
        raise ProtocolError("bad_op", f"op must be one of {', '.join(OPS)}, not {op!r}", rid)
    if op == "ping":
        return Command(op, request_id=rid)
    if "rooms" in doc:
        rooms = doc["rooms"]
        if not isinstance(rooms, list) or not rooms or not all(isinstance(r, str) for r in rooms):
            raise ProtocolError("bad_message", "rooms must be a non-empty list of room names", rid)
        if len(rooms) > MAX_ROOMS_PER_MESSAGE:
            raise ProtocolError("too_many_rooms", f"{len(rooms)} rooms in one message; the limit is {MAX_ROOMS_PER_MESSAGE}", rid)
    elif isinstance(doc.get("room"), str):
        rooms = [doc["room"]]
    else:
        raise ProtocolError("bad_message", f"{op} needs room (a string) or rooms (a list)", rid)
    since, epoch = doc.get("since"), doc.get("epoch")
    if since is not None:
        if op != "subscribe" or not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise ProtocolError("bad_message", "since is the last sequence number received (an integer >= 0), on subscribe only", rid)
        if len(rooms) != 1:
            raise ProtocolError("bad_message", "since applies to one room: subscribe with room, not rooms", rid)
    if epoch is not None and not (isinstance(epoch, str) and len(epoch) <= 64):
        raise ProtocolError("bad_message", "epoch must be the string the subscribed ack gave", rid)
    return Command(op, tuple(dict.fromkeys(rooms)), since, epoch, rid)


def error_frame(code: str, message: str, request_id: object = None, room: str | None = None) -> bytes:
    doc: dict[str, object] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        doc["id"] = request_id
    if room is not None:
        doc["room"] = room
    return orjson.dumps(doc)


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, uncompressed WebSocket text frame (RFC 6455 5.2), as a server sends it.

    A room's message is framed once and the same bytes are written to every client of the room:
    server frames carry no mask, and the gateway negotiates no compression, so they do not differ."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame made by :func:`text_frame`."""
    n = frame[1]
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]
