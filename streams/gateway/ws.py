"""WebSocket fan-out: one Redis pattern subscription per room per process, a bounded queue per client.

The :class:`Hub` holds one Redis pub/sub connection. The first client of a room makes the hub
PSUBSCRIBE the room's channel pattern (rooms sharing a pattern share it); a Redis message is
numbered once per room, encoded once as a complete WebSocket frame (bytes), kept in the room's
history for recovery, and handed to each client without waiting: written straight to the client's
socket while its send buffer has room, queued otherwise. Per client and message that is one
buffer write, no task switch and no JSON or frame encoding, which is what lets one process fan a
message out to a thousand clients within milliseconds. A client whose queue is full is a slow
consumer: it is dropped from its rooms at once and closed with 4008, and nobody else waits for it. A room without clients keeps
its subscription and history for ``GATEWAY_WS_ROOM_IDLE_S`` so reconnecting clients can recover,
then is dropped.

Close codes: 4401 missing or wrong key, 4403 key without the ``stream`` scope, 4008 slow consumer
(queue overflow), 4429 too many messages from the client. Protocol errors (bad JSON, unknown room,
too many rooms) are answered with an ``error`` frame and the connection stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter, Gauge, Histogram
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from streams.gateway.auth import TokenBucket
from streams.gateway.protocol import Command, ProtocolError, error_frame, frame_payload, parse_command, text_frame
from streams.gateway.rooms import Room, RoomError, RoomHistory, message_frame, parse_room

log = structlog.get_logger(__name__)

WS_CLIENTS = Gauge("tickflow_gateway_ws_clients", "Connected WebSocket clients")
WS_ROOMS = Gauge("tickflow_gateway_ws_rooms", "Rooms with a Redis subscription in this process")
WS_DROPPED = Counter(
    "tickflow_gateway_ws_dropped_total",
    "Drops by reason: slow_consumer (a client closed, its queue full), client_flood (a client closed, too many messages), "
    "bad_payload (a non-JSON Redis message not forwarded), redis_down (pub/sub connection lost)",
    ["reason"],
)
WS_SENT = Counter(
    "tickflow_gateway_ws_messages_total",
    "Room message frames handed to clients, by how: written (straight to the socket) or queued (behind a full socket buffer)", ["how"],
)
_WRITTEN, _QUEUED = WS_SENT.labels("written"), WS_SENT.labels("queued")
NOT_SENT, WRITTEN, QUEUED = 0, 1, 2  # Client.offer's answers
WS_FANOUT = Histogram(
    "tickflow_gateway_ws_fanout_seconds", "Time to number, frame and queue one Redis message for every client of its rooms",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_SLOW, CLOSE_FLOOD = 4401, 4403, 4008, 4429


def _frame(doc: dict[str, object]) -> bytes:
    return text_frame(orjson.dumps(doc))


def _error(code: str, message: str, request_id: object = None, room: str | None = None) -> bytes:
    return text_frame(error_frame(code, message, request_id, room))


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel the background tasks and wait for each to end; what they raise on the way out is theirs."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


SERVER_SEND = "tickflow.server_send"  # scope key: the ASGI server's own send, kept before Starlette wraps it


def server_connection(ws: WebSocket) -> Any | None:
    """uvicorn's websockets-sansio connection behind ``ws`` (the one ``serve`` configures), else None.

    The application keeps the server's send in the scope (:data:`SERVER_SEND`); the connection is
    the object it is bound to. Its transport takes ready-made frames; its ``writable`` event is
    cleared while the transport's buffer is over its high-water mark and ``close_sent`` is set once
    the close frame went out. Frames written here never interleave with uvicorn's own (pings,
    close): each is one whole ``write``."""
    conn = getattr(ws.scope.get(SERVER_SEND), "__self__", None)
    if all(hasattr(conn, a) for a in ("transport", "writable", "close_sent")) and isinstance(conn.writable, asyncio.Event):
        return conn
    return None


def abort(ws: WebSocket) -> None:
    """Drop the connection at once. A client that reads nothing keeps the server's write buffer
    full, so even the close frame cannot be queued (uvicorn waits for the buffer to drain); after
    ``close_timeout_s`` its transport is aborted instead of being held until the ping timeout."""
    conn = server_connection(ws)
    if conn is not None:
        conn.transport.abort()


class Client:
    """One connection's outgoing side: frames go to the socket at once, or wait in a bounded queue.

    A frame is written straight to the transport when nothing is queued and the transport is under
    its high-water mark; otherwise it is queued (order kept) and the client's sender task writes it
    once the transport drains. Under another ASGI server than uvicorn's websockets-sansio, every
    frame goes through the queue and the ASGI send."""

    __slots__ = ("closed", "conn", "maxsize", "overflowed", "queue", "rooms", "transport", "wake", "writable", "ws")

    def __init__(self, ws: WebSocket, maxsize: int) -> None:
        self.ws, self.maxsize = ws, maxsize
        self.conn = server_connection(ws)
        self.transport = self.conn.transport if self.conn is not None else None
        self.writable = self.conn.writable.is_set if self.conn is not None else None
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.rooms: set[str] = set()
        self.closed: tuple[int, str] | None = None
        self.overflowed = asyncio.Event()

    def offer(self, frame: bytes) -> int:
        """Write or queue ``frame`` (from :func:`text_frame`): WRITTEN, QUEUED, or NOT_SENT when the
        client is closed or has just overflowed its queue."""
        conn, transport = self.conn, self.transport
        if self.closed is None and conn is not None and not self.queue and self.writable() and not conn.close_sent and not transport.is_closing():  # type: ignore[misc, union-attr]
            transport.write(frame)  # type: ignore[union-attr]
            return WRITTEN  # the common case, once per client and message: kept to these checks
        if self.closed is not None or (conn is not None and (conn.close_sent or transport.is_closing())):  # type: ignore[union-attr]
            return NOT_SENT  # closed, or ending: the server's own close handling finishes it
        if len(self.queue) >= self.maxsize:
            WS_DROPPED.labels("slow_consumer").inc()
            self.closed = (CLOSE_SLOW, f"slow consumer: more than {self.maxsize} messages queued")
            self.queue.clear()
            self.overflowed.set()
            return NOT_SENT
        self.queue.append(frame)
        self.wake.set()
        return QUEUED

    async def drain(self) -> None:
        """The sender task: write queued frames as the transport accepts them."""
        conn, queue = self.conn, self.queue
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            while True:
                await self.wake.wait()
                self.wake.clear()
                while queue:
                    if conn is None:
                        await self.ws.send_text(frame_payload(queue.popleft()).decode())
                    elif not conn.writable.is_set():
                        await conn.writable.wait()  # then look again: an overflow may have emptied the queue meanwhile
                    elif conn.close_sent or conn.transport.is_closing():
                        return
                    else:
                        conn.transport.write(queue.popleft())


@dataclass(eq=False)
class RoomState:
    room: Room
    history: RoomHistory
    clients: set[Client] = field(default_factory=set)
    idle_since: float | None = None


class Hub:
    def __init__(
        self,
        redis_url: str | None,
        templates: Mapping[str, str],
        *,
        history: int = 1000,
        queue: int = 1000,
        max_rooms_per_client: int = 100,
        max_rooms: int = 10_000,
        room_idle_s: float = 60.0,
        heartbeat_s: float = 15.0,
        client_msgs_per_s: float = 50.0,
    ) -> None:
        self._redis = aioredis.Redis.from_url(redis_url) if redis_url else None
        self._pubsub = self._redis.pubsub() if self._redis else None
        self._confirm: dict[str, asyncio.Event] = {}  # patterns sent, waiting for Redis's confirmation
        self.templates = templates
        self.history, self.queue_size = history, queue
        self.max_rooms_per_client, self.max_rooms = max_rooms_per_client, max_rooms
        self.room_idle_s, self.heartbeat_s, self.client_msgs_per_s = room_idle_s, heartbeat_s, client_msgs_per_s
        self.close_timeout_s = 2.0
        self.rooms: dict[str, RoomState] = {}
        self._by_pattern: dict[str, list[RoomState]] = {}
        self._clients: set[Client] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    # lifecycle

    async def start(self) -> None:
        if self._pubsub is not None:
            self._tasks.append(asyncio.create_task(self._read(), name="gateway-hub-reader"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="gateway-hub-housekeeping"))

    async def close(self) -> None:
        await cancel_all(self._tasks)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    async def ping(self) -> None:
        if self._redis is None:
            raise RuntimeError("REDIS_URL is empty: no realtime rooms")
        await self._redis.ping()

    async def _read(self) -> None:
        """Dispatch Redis messages; on a lost connection, reconnect and subscribe every pattern again."""
        assert self._pubsub is not None
        backoff = 0.1
        while True:
            try:
                if not self._pubsub.subscribed:  # listen() ends when nothing is subscribed
                    self._subscribed.clear()
                    await self._subscribed.wait()
                # listen() waits for the next message without polling; it ends when the last pattern goes
                async for msg in self._pubsub.listen():
                    backoff = 0.1
                    if msg["type"] == "pmessage":
                        self.dispatch(msg["pattern"].decode(), msg["channel"].decode(), msg["data"])
                    elif msg["type"] == "psubscribe" and (ev := self._confirm.pop(msg["channel"].decode(), None)) is not None:
                        ev.set()
            except asyncio.CancelledError:
                raise
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                WS_DROPPED.labels("redis_down").inc()
                log.warning("redis pub/sub lost; reconnecting", error=str(exc), retry_in_s=backoff)
                backoff = await self._resubscribe(backoff)

    async def _resubscribe(self, backoff: float) -> float:
        """A new pub/sub connection with every room's pattern, tried with backoff until Redis takes
        it (a restarted Redis knows no subscriptions); returns the backoff reached."""
        attempts = 0
        while True:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            attempts += 1
            patterns = list(self._by_pattern)
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[union-attr]
            self._pubsub = self._redis.pubsub()  # type: ignore[union-attr]
            if not patterns:
                return backoff
            try:
                await self._pubsub.psubscribe(*patterns)
            except (aioredis.RedisError, OSError) as exc:
                log.warning("redis still unreachable; rooms wait", error=str(exc), attempt=attempts, retry_in_s=backoff)
                continue
            log.warning("redis pub/sub back: rooms subscribed again (messages published meanwhile are not recoverable here)", patterns=len(patterns), attempts=attempts)
            return backoff

    def dispatch(self, pattern: str, channel: str, data: bytes) -> None:
        rooms = self._by_pattern.get(pattern)
        if not rooms:
            return
        t0 = time.perf_counter()
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            WS_DROPPED.labels("bad_payload").inc()
            log.error("non-JSON message on a Redis channel: not forwarded", channel=channel, head=data[:80])
            return
        written = queued = 0
        for rs in rooms:
            _, frame = rs.history.append(lambda seq, rs=rs: text_frame(message_frame(rs.room.name, seq, channel, data)))
            for c in rs.clients:
                how = c.offer(frame)
                if how == WRITTEN:
                    written += 1
                elif how == QUEUED:
                    queued += 1
        _WRITTEN.inc(written)
        _QUEUED.inc(queued)
        WS_FANOUT.observe(time.perf_counter() - t0)

    async def _housekeeping(self) -> None:
        """Heartbeats to every client; drop rooms idle longer than ``room_idle_s``."""
        while True:
            await asyncio.sleep(min(self.heartbeat_s, self.room_idle_s / 2))
            beat = _frame({"type": "heartbeat", "ts": int(time.time() * 1000)})
            for c in list(self._clients):
                c.offer(beat)
            now = time.monotonic()
            for name, rs in list(self.rooms.items()):
                if not rs.clients and rs.idle_since is not None and now - rs.idle_since > self.room_idle_s:
                    await self._drop_room(name)

    # rooms

    async def _room(self, room: Room) -> RoomState:
        rs = self.rooms.get(room.name)
        if rs is not None:
            return rs
        if len(self.rooms) >= self.max_rooms:
            raise RoomError(f"this gateway serves at most {self.max_rooms} rooms at once; try again later")
        rs = self.rooms[room.name] = RoomState(room, RoomHistory(self.history, uuid.uuid4().hex[:12]))
        sharing = self._by_pattern.setdefault(room.pattern, [])
        sharing.append(rs)
        if len(sharing) == 1 and self._pubsub is not None:
            # the client's ack waits for Redis's confirmation: a message published after the ack reaches it
            confirmed = self._confirm[room.pattern] = asyncio.Event()
            await self._pubsub.psubscribe(room.pattern)
            self._subscribed.set()
            try:
                await asyncio.wait_for(confirmed.wait(), 5.0)
            except asyncio.TimeoutError:
                log.warning("redis did not confirm a room's subscription within 5 s", pattern=room.pattern)
        WS_ROOMS.set(len(self.rooms))
        return rs

    async def _drop_room(self, name: str) -> None:
        rs = self.rooms.pop(name)
        sharing = self._by_pattern[rs.room.pattern]
        sharing.remove(rs)
        if not sharing:
            del self._by_pattern[rs.room.pattern]
            if self._pubsub is not None:
                with contextlib.suppress(aioredis.RedisError, OSError):
                    await self._pubsub.punsubscribe(rs.room.pattern)
        WS_ROOMS.set(len(self.rooms))

    def _leave(self, client: Client, name: str) -> None:
        client.rooms.discard(name)
        rs = self.rooms.get(name)
        if rs is not None:
            rs.clients.discard(client)
            if not rs.clients:
                rs.idle_since = time.monotonic()

    async def _subscribe(self, client: Client, cmd: Command) -> None:
        for name in cmd.rooms:
            if name in client.rooms:
                h = self.rooms[name].history
                client.offer(_frame({"type": "subscribed", "id": cmd.request_id, "room": name, "epoch": h.epoch, "seq": h.seq, "already": True}))
                continue
            if len(client.rooms) >= self.max_rooms_per_client:
                client.offer(_error("too_many_rooms", f"at most {self.max_rooms_per_client} rooms per connection", cmd.request_id, name))
                continue
            try:
                room = parse_room(name, self.templates)
                rs = await self._room(room)
            except RoomError as exc:
                client.offer(_error("bad_room", str(exc), cmd.request_id, name))
                continue
            ack: dict[str, object] = {"type": "subscribed", "id": cmd.request_id, "room": name, "epoch": rs.history.epoch, "seq": rs.history.seq}
            missed: list[bytes] = []
            if cmd.since is not None:
                rec = rs.history.since(cmd.since, cmd.epoch)
                ack["recovered"] = rec.messages is not None
                if rec.messages is None:
                    ack["gap"] = "too old: the messages after since are no longer buffered (or the gateway restarted); reload from the query API"
                else:
                    missed = rec.messages  # type: ignore[assignment]
            # ack, then the missed messages, then live ones: nothing is sent twice or skipped since
            # dispatch runs on this loop and cannot interleave between these offers
            client.offer(_frame(ack))
            for frame in missed:
                client.offer(frame)
            rs.clients.add(client)
            rs.idle_since = None
            client.rooms.add(name)

    def _unsubscribe(self, client: Client, cmd: Command) -> None:
        for name in cmd.rooms:
            if name not in client.rooms:
                client.offer(_error("not_subscribed", f"not subscribed to {name!r}", cmd.request_id, name))
                continue
            self._leave(client, name)
            client.offer(_frame({"type": "unsubscribed", "id": cmd.request_id, "room": name}))

    # connections

    async def serve(self, ws: WebSocket) -> None:
        """Run one accepted connection until it closes, is dropped as slow, or floods."""
        client = Client(ws, self.queue_size)
        client.offer(_frame({"type": "welcome", "heartbeat_s": self.heartbeat_s}))
        self._clients.add(client)
        WS_CLIENTS.set(len(self._clients))
        sender = asyncio.create_task(client.drain())
        receiver = asyncio.create_task(self._receive(client))
        overflow = asyncio.create_task(client.overflowed.wait())
        try:
            await asyncio.wait({sender, receiver, overflow}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for name in list(client.rooms):
                self._leave(client, name)
            for t in (sender, receiver, overflow):
                t.cancel()
            self._clients.discard(client)
            WS_CLIENTS.set(len(self._clients))
            if client.closed is not None and ws.application_state != WebSocketState.DISCONNECTED:
                code, reason = client.closed
                if code == CLOSE_SLOW:
                    log.info("slow WebSocket client dropped", reason=reason)
                try:
                    await asyncio.wait_for(ws.close(code, reason), self.close_timeout_s)
                except asyncio.TimeoutError:
                    abort(ws)
                except Exception:  # noqa: BLE001 - the client went away meanwhile
                    pass

    async def _receive(self, client: Client) -> None:
        bucket = TokenBucket(self.client_msgs_per_s, self.client_msgs_per_s * 2, time.monotonic())
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                msg = await client.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if bucket.take(time.monotonic()):
                    WS_DROPPED.labels("client_flood").inc()
                    client.closed = (CLOSE_FLOOD, f"more than {self.client_msgs_per_s:g} messages/s from the client")
                    return
                frame = msg.get("text")
                if frame is None:
                    frame = msg.get("bytes") or b""
                try:
                    cmd = parse_command(frame)
                except ProtocolError as exc:
                    client.offer(_error(exc.code, str(exc), exc.request_id))
                    continue
                if cmd.op == "ping":
                    client.offer(_frame({"type": "pong", "id": cmd.request_id}))
                elif cmd.op == "subscribe":
                    await self._subscribe(client, cmd)
                else:
                    self._unsubscribe(client, cmd)
