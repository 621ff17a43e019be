"""WebSocket fan-out: one Redis pattern subscription per room per process, a bounded queue per client.

The :class:`Hub` holds one Redis pub/sub connection. The first client of a room makes the hub
PSUBSCRIBE the room's channel pattern (rooms sharing a pattern share it); a Redis message is
numbered once per room, framed once, kept in the room's history for recovery, and put on each
client's queue without waiting. A client whose queue is full is a slow consumer: it is dropped from
its rooms at once and closed with 4008, and nobody else waits for it. A room without clients keeps
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
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter, Gauge, Histogram
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from streams.gateway.auth import TokenBucket
from streams.gateway.protocol import Command, ProtocolError, error_frame, parse_command
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
WS_SENT = Counter("tickflow_gateway_ws_messages_total", "Message frames put on client queues")
WS_FANOUT = Histogram(
    "tickflow_gateway_ws_fanout_seconds", "Time to number, frame and queue one Redis message for every client of its rooms",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_SLOW, CLOSE_FLOOD = 4401, 4403, 4008, 4429


def abort(ws: WebSocket) -> None:
    """Drop the connection at once. A client that reads nothing keeps the server's write buffer
    full, so even the close frame cannot be queued (uvicorn waits for the buffer to drain); after
    ``close_timeout_s`` its transport is aborted instead of being held until the ping timeout."""
    transport = getattr(getattr(ws._send, "__self__", None), "transport", None)  # noqa: SLF001 - uvicorn's protocol
    if transport is not None:
        transport.abort()


@dataclass(eq=False)
class Client:
    ws: WebSocket
    queue: asyncio.Queue[str]
    rooms: set[str] = field(default_factory=set)
    closed: tuple[int, str] | None = None
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: str) -> bool:
        if self.closed is not None:
            return False
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            WS_DROPPED.labels("slow_consumer").inc()
            self.closed = (CLOSE_SLOW, f"slow consumer: more than {self.queue.maxsize} messages queued")
            self.overflowed.set()
            return False


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
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
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
        for rs in rooms:
            _, frame = rs.history.append(lambda seq, rs=rs: message_frame(rs.room.name, seq, channel, data).decode())
            for c in rs.clients:
                if c.offer(frame):
                    WS_SENT.inc()
        WS_FANOUT.observe(time.perf_counter() - t0)

    async def _housekeeping(self) -> None:
        """Heartbeats to every client; drop rooms idle longer than ``room_idle_s``."""
        while True:
            await asyncio.sleep(min(self.heartbeat_s, self.room_idle_s / 2))
            beat = orjson.dumps({"type": "heartbeat", "ts": int(time.time() * 1000)}).decode()
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
                client.offer(orjson.dumps({"type": "subscribed", "id": cmd.request_id, "room": name, "epoch": h.epoch, "seq": h.seq, "already": True}).decode())
                continue
            if len(client.rooms) >= self.max_rooms_per_client:
                client.offer(error_frame("too_many_rooms", f"at most {self.max_rooms_per_client} rooms per connection", cmd.request_id, name).decode())
                continue
            try:
                room = parse_room(name, self.templates)
                rs = await self._room(room)
            except RoomError as exc:
                client.offer(error_frame("bad_room", str(exc), cmd.request_id, name).decode())
                continue
            ack: dict[str, object] = {"type": "subscribed", "id": cmd.request_id, "room": name, "epoch": rs.history.epoch, "seq": rs.history.seq}
            missed: list[str] = []
            if cmd.since is not None:
                rec = rs.history.since(cmd.since, cmd.epoch)
                ack["recovered"] = rec.messages is not None
                if rec.messages is None:
                    ack["gap"] = "too old: the messages after since are no longer buffered (or the gateway restarted); reload from the query API"
                else:
                    missed = rec.messages  # type: ignore[assignment]
            # ack, then the missed messages, then live ones: nothing is sent twice or skipped since
            # dispatch runs on this loop and cannot interleave between these offers
            client.offer(orjson.dumps(ack).decode())
            for frame in missed:
                client.offer(frame)
            rs.clients.add(client)
            rs.idle_since = None
            client.rooms.add(name)

    def _unsubscribe(self, client: Client, cmd: Command) -> None:
        for name in cmd.rooms:
            if name not in client.rooms:
                client.offer(error_frame("not_subscribed", f"not subscribed to {name!r}", cmd.request_id, name).decode())
                continue
            self._leave(client, name)
            client.offer(orjson.dumps({"type": "unsubscribed", "id": cmd.request_id, "room": name}).decode())

    # connections

    async def serve(self, ws: WebSocket) -> None:
        """Run one accepted connection until it closes, is dropped as slow, or floods."""
        client = Client(ws, asyncio.Queue(self.queue_size))
        self._clients.add(client)
        WS_CLIENTS.set(len(self._clients))
        sender = asyncio.create_task(self._send(client))
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

    async def _send(self, client: Client) -> None:
        send = client.ws.send_text
        queue = client.queue
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            while True:
                await send(await queue.get())

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
                    client.offer(error_frame(exc.code, str(exc), exc.request_id).decode())
                    continue
                if cmd.op == "ping":
                    client.offer(orjson.dumps({"type": "pong", "id": cmd.request_id}).decode())
                elif cmd.op == "subscribe":
                    await self._subscribe(client, cmd)
                else:
                    self._unsubscribe(client, cmd)
