"""WebSocket rooms: names, their Redis channel patterns, per-room sequence and recovery history.

Pure and I/O-free. A room names what a client wants in the product's terms
(``candles:BTCUSDT:1m``); the Redis channel a record goes out on is declared once, as the
``channel`` template of its record type in :mod:`schemas.registry`
(``candles:{exchange}:{symbol}:{interval}``). A room gives the template's fields named in
:data:`ROOM_FIELDS` in that order; every other field of the template (the exchange) is a wildcard,
so ``candles:BTCUSDT:1m`` follows BTCUSDT 1m on every exchange. A room may instead give every
field of the template in its order (``candles:binance:BTCUSDT:1m``) to follow one exchange.
Any part may be ``*``: ``candles:*:1m`` is every symbol's 1m candles.

A room kind whose record type is not registered (yet) with a channel is refused with the reason,
so ``onchain:BTC`` starts working the day an on-chain record type declares ``onchain:{...}``.
"""

from __future__ import annotations

import re
import string
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The fields a room names per kind, in order. Kinds map to record types by their channel prefix.
ROOM_FIELDS: dict[str, tuple[str, ...]] = {
    "candles": ("symbol", "interval"),
    "indicators": ("symbol", "interval"),
    "onchain": ("asset",),
    "onchain_blocks": ("asset",),
    "sentiment": ("asset",),
    "signals": ("symbol",),
}
MAX_ROOM_CHARS = 160
_PART_RE = re.compile(r"^(?:\*|[A-Za-z0-9][A-Za-z0-9/_.\-]{0,63})$")


class RoomError(ValueError):
    """A room name the gateway cannot serve; the message says why."""


@dataclass(frozen=True, slots=True)
class Room:
    name: str  # as the client wrote it: the key of subscriptions, sequences and history
    kind: str
    pattern: str  # Redis PSUBSCRIBE pattern of the record type's channel


def template_fields(template: str) -> list[str]:
    """Field names of a channel template, in order: ``candles:{exchange}:{symbol}`` -> exchange, symbol."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def channel_templates(records: Iterable[object]) -> dict[str, str]:
    """Room kind -> channel template of the record type publishing it (registry order; first wins)."""
    out: dict[str, str] = {}
    for rt in records:
        channel = getattr(rt, "channel", None)
        if channel:
            out.setdefault(channel.split(":", 1)[0], channel)
    return out


def parse_room(name: object, templates: Mapping[str, str]) -> Room:
    """The room ``name`` as a Redis channel pattern, or :class:`RoomError` saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise RoomError("a room is a non-empty string such as 'candles:BTCUSDT:1m'")
    if len(name) > MAX_ROOM_CHARS:
        raise RoomError(f"room name longer than {MAX_ROOM_CHARS} characters")
    kind, *parts = name.split(":")
    if kind not in ROOM_FIELDS:
        raise RoomError(f"unknown room kind {kind!r}; rooms: " + ", ".join(f"{k}:{{{'}:{'.join(v)}}}" for k, v in ROOM_FIELDS.items()))
    template = templates.get(kind)
    if template is None:
        raise RoomError(f"no record type publishes {kind!r} in this deployment yet (none declares a '{kind}:' channel)")
    for part in parts:
        if not _PART_RE.match(part):
            raise RoomError(f"room {name!r}: part {part!r} must be '*' or letters, digits, '/', '_', '.', '-' (at most 64)")
    fields = template_fields(template)
    short = [f for f in ROOM_FIELDS[kind] if f in fields]
    if len(parts) == len(short):
        values = dict(zip(short, parts, strict=True))
    elif len(parts) == len(fields):
        values = dict(zip(fields, parts, strict=True))
    else:
        full = f"{kind}:{{{'}:{'.join(fields)}}}" if fields else kind
        raise RoomError(f"room {name!r}: expected {kind}:{{{'}:{'.join(short)}}} or {full}")
    pattern = template.format(**{f: values.get(f, "*") for f in fields})
    return Room(name, kind, pattern)


@dataclass(slots=True)
class Recovery:
    """What a client resuming at ``since`` gets: the messages after it, or ``None`` when the gap is too old."""

    messages: list[bytes] | None
    seq: int


class RoomHistory:
    """A room's sequence counter and its last ``size`` encoded messages.

    ``epoch`` names this counter's lifetime (a gateway process's room): a client resuming with
    another epoch missed an unknown number of messages, as does one whose ``since`` fell out of
    the buffer; both are told the gap is too old.
    """

    __slots__ = ("_buf", "epoch", "seq")

    def __init__(self, size: int, epoch: str) -> None:
        self._buf: deque[tuple[int, bytes]] = deque(maxlen=size)
        self.epoch = epoch
        self.seq = 0

    def append(self, encode: object) -> tuple[int, bytes]:
        """Number the next message; ``encode(seq) -> bytes`` makes its payload, kept for recovery."""
        self.seq += 1
        payload = encode(self.seq)  # type: ignore[operator]
        self._buf.append((self.seq, payload))
        return self.seq, payload

    def since(self, seq: int, epoch: str | None) -> Recovery:
        if epoch is not None and epoch != self.epoch:
            return Recovery(None, self.seq)
        if seq >= self.seq:
            return Recovery([], self.seq)  # nothing missed (or a client ahead of a restarted counter: same epoch cannot be)
        oldest = self._buf[0][0] if self._buf else self.seq + 1
        if seq + 1 < oldest:
            return Recovery(None, self.seq)
        return Recovery([p for s, p in self._buf if s > seq], self.seq)


def message_frame(room: str, seq: int, channel: str, data: bytes) -> bytes:
    """One outgoing message, built once per room and sent as is to every client in it.

    ``room`` and ``channel`` passed :func:`parse_room`'s character check or came from Redis under a
    pattern built from such parts, so they need no JSON escaping beyond what is checked here."""
    if '"' in channel or "\\" in channel:
        channel = channel.replace("\\", "\\\\").replace('"', '\\"')
    return b'{"type":"message","room":"%s","seq":%d,"channel":"%s","data":%s}' % (room.encode(), seq, channel.encode(), data)
