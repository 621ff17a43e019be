"""Gateway load on loopback, bounded in time: WebSocket fan-out latency and cached query throughput.

The gateway runs as `tickflow serve` (one uvicorn process, uvloop, httptools) pinned with taskset to
the first core; everything that makes load (the WebSocket clients, the Redis publisher, wrk) is
pinned to the last core, so the load generator takes no time from the gateway's core. Redis,
PostgreSQL and whatever else the machine runs are not pinned: the load average is printed, and every
figure stands beside a baseline measured in the same run, in runs taken turn about.

Fan-out: clients in one room on raw sockets, all in one epoll loop written here (a WebSocket client
library spends more time per message than the gateway does). A message's delay runs from just before
its PUBLISH to Redis to its receipt, timed twice: by the kernel when the frame reached the client's
socket (SO_TIMESTAMPNS: what the gateway controls) and when the client process read it (adds that
process's own turn through 1,000 sockets). The floor is a bare uvloop server writing the same
messages to as many sockets, framed once (:func:`fanout_floor`), in the same run. The slow client
never reads; before the window opens, large messages in a second room of its own fill its socket
and the gateway's buffer for it, so during the window every frame for it queues (the queue
overflows, closing it, just after): the others' delays must not move.

Queries: wrk on one cached URL, against a plain Starlette app on the same uvicorn settings serving
the same body (the floor of the HTTP stack), and with the cache off (PostgreSQL on every request).
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import console, fmt_ratio, fresh_pg_database, median, table
from streams.broker import free_port
from streams.settings import StoreSettings

DEFAULT_PG = StoreSettings.model_fields["database_url"].default
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
ROOM_RATE = 10  # messages/s into the room: a symbol's in-progress updates at CANDLE_UPDATE_MS=25 are at most 40/s over all its intervals
SECONDS = 5.0
RUNS = 3
CLIENTS = 1000
FILLER_BYTES = 64_000  # messages of the slow client's second room, sent before the measured window until its socket is full
SLOW_QUEUE = int(SECONDS * ROOM_RATE) + 10  # GATEWAY_WS_QUEUE: the slow client stays backlogged through the window, and is closed after it
WRK_CONNECTIONS, WRK_SECONDS = 32, 5
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python names it from 3.12 only
TARGETS = {
    "fanout": "target: p99 <= 10 ms with 1,000 clients in one room; a client that never reads does not raise the others' p99",
    "queries": "target: cached candles >= 10,000 requests/s with p99 <= 20 ms; uncached: reported",
}


def cores() -> tuple[int, int]:
    """(gateway core, load core): the first and the last this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


def load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def hardware() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), platform.processor())
    gw, gen = cores()
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}; load average {load()} "
            f"(other work on the machine); gateway pinned to core {gw}, load generators to core {gen} (taskset), Redis and PostgreSQL not pinned")


@dataclass(frozen=True)
class Running:
    base: str  # host:port
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process has used: unlike wall time, not inflated by other work on its core."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str]) -> Iterator[Running]:
    """A server process pinned to the gateway's core, on a free port."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="tickflow-bench-gateway-", suffix=".log", delete=False)  # a pipe nobody reads would block it
    proc = subprocess.Popen(["taskset", "-c", str(cores()[0]), *cmd, "--port", str(port)], env={**os.environ, **env}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {Path(log.name).read_text()[-500:]}")
            time.sleep(0.1)
        yield Running(f"127.0.0.1:{port}", proc.pid)  # taskset execs the server: same pid
    except BaseException:
        console.print(f"server log: {Path(log.name).read_text()[-1500:]}")
        raise
    finally:
        os.environ.get("BENCH_GW_LOG") or Path(log.name).unlink(missing_ok=True)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gateway(db: str, **env: str) -> contextlib.AbstractContextManager[Running]:
    return server([sys.executable, "-m", "streams", "serve"],
                  {"DATABASE_URL": db, "REDIS_URL": REDIS_URL, "METRICS_PORT": "0", "LOG_LEVEL": os.environ.get("BENCH_GW_LOG", "WARNING"), "GATEWAY_WS_QUEUE": str(SLOW_QUEUE), **env})


def baseline_app() -> object:
    """The HTTP floor: Starlette answering every request with the bytes in $BENCH_BODY."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = Path(os.environ["BENCH_BODY"]).read_bytes()

    async def answer(_: object) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", answer)])


def baseline(body: Path) -> contextlib.AbstractContextManager[Running]:
    """:func:`baseline_app` under uvicorn with the gateway's HTTP settings (uvloop, httptools, no access log, no proxy headers)."""
    return server([sys.executable, "-m", "uvicorn", "--factory", "benchmarks.bench_gateway:baseline_app", "--loop", "uvloop", "--http", "httptools",
                   "--no-access-log", "--no-proxy-headers", "--log-level", "warning"], {"BENCH_BODY": str(body)})


# WebSocket fan-out


def fanout_floor(port: int) -> None:
    """The fan-out floor: a bare uvloop server that upgrades any request, acks any subscription, and
    writes each message of one Redis pattern, framed once, to every connection. No keys, rooms,
    sequences, history, queues or slow-client handling: what Python, uvloop and loopback TCP cost alone."""
    import asyncio
    import hashlib

    import redis.asyncio as aioredis
    import uvloop

    from streams.gateway.protocol import text_frame

    conns: set[asyncio.Transport] = set()

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t, self.buf, self.open = transport, b"", False

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if not self.open and b"\r\n\r\n" in self.buf:
                key = re.search(rb"Sec-WebSocket-Key: (\S+)", self.buf).group(1)  # type: ignore[union-attr]
                accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                self.open, self.buf = True, b""
            elif self.open and self.buf:  # the client's subscribe
                self.buf = b""
                self.t.write(text_frame(b'{"type":"subscribed"}'))
                conns.add(self.t)  # type: ignore[arg-type]

        def connection_lost(self, exc: Exception | None) -> None:
            conns.discard(self.t)  # type: ignore[arg-type]

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", port, backlog=4096)
        async with aioredis.Redis.from_url(REDIS_URL).pubsub() as ps:
            await ps.psubscribe("candles:*:BENCH*")
            async for msg in ps.listen():
                if msg["type"] == "pmessage":
                    frame = text_frame(b'{"type":"message","data":%s}' % msg["data"])
                    for t in conns:
                        t.write(frame)

    uvloop.run(main())



def _masked(payload: bytes) -> bytes:
    """A client frame (text, masked, short)."""
    mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _frames(buf: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete server frames (opcode, payload) at the head of ``buf``, consumed from it."""
    while len(buf) >= 2:
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return
            n, at = struct.unpack_from(">H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return
            n, at = struct.unpack_from(">Q", buf, 2)[0], 10
        if len(buf) < at + n:
            return
        op, payload = buf[0] & 0x0F, bytes(buf[at : at + n])
        del buf[: at + n]
        yield op, payload


def _open(base: str, key: str, rcvbuf: int | None = None) -> socket.socket:
    """A connected socket that sent its upgrade request (the answer is read later)."""
    host, port = base.split(":")
    sk = socket.socket()
    if rcvbuf:
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sk.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sk.connect((host, int(port)))
    sk.sendall(f"GET /ws?token={key} HTTP/1.1\r\nHost: {base}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    return sk


def _until(sk: socket.socket, buf: bytearray, done: object) -> None:
    """Read (blocking) into ``buf`` until ``done(buf)``."""
    sk.settimeout(60)
    while not done(buf):  # type: ignore[operator]
        chunk = sk.recv(65536)
        if not chunk:
            raise RuntimeError("the gateway closed a client during setup")
        buf += chunk


def _clients_process(base: str, key: str, rooms: tuple[str, str], n: int, slow: int, out: Path, ready: Path, core: int) -> None:
    """n reading clients of rooms[0] and ``slow`` clients of both rooms that never read; delays to ``out``."""
    import select

    import orjson

    os.sched_setaffinity(0, {core})
    subscribe = [_masked(orjson.dumps({"op": "subscribe", "room": r})) for r in rooms]
    slow_socks = []
    for _ in range(slow):
        sk, buf = _open(base, key, rcvbuf=4096), bytearray()
        _until(sk, buf, lambda b: b"\r\n\r\n" in b)
        sk.sendall(subscribe[0] + subscribe[1])
        slow_socks.append(sk)
    socks: list[socket.socket] = []
    bufs: list[bytearray] = []
    for start in range(0, n, 100):  # upgrade requests in waves of 100, then their answers
        wave = [_open(base, key) for _ in range(start, min(n, start + 100))]
        for sk in wave:
            buf = bytearray()
            _until(sk, buf, lambda b: b"\r\n\r\n" in b)
            if not buf.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {bytes(buf[:100])!r}")
            del buf[: buf.index(b"\r\n\r\n") + 4]
            sk.sendall(subscribe[0])
            socks.append(sk)
            bufs.append(buf)
    for sk, buf in zip(socks, bufs, strict=True):
        _until(sk, buf, lambda b: b'"type":"subscribed"' in b)
        del buf[:]
        sk.setblocking(False)
    ep = select.epoll()
    by_fd = {sk.fileno(): i for i, sk in enumerate(socks)}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    ready.write_text("ok")
    got: list[tuple[float, float, bytes]] = []  # (kernel receipt, read, payload)
    open_ = set(by_fd)

    def finish(fd: int) -> None:
        if fd in open_:
            ep.unregister(fd)
            open_.discard(fd)

    deadline = time.monotonic() + SECONDS + 120
    while open_ and time.monotonic() < deadline:
        for fd, _ in ep.poll(1.0):
            i = by_fd[fd]
            try:
                data, anc, _, _ = socks[i].recvmsg(1 << 16, socket.CMSG_SPACE(16))
            except (BlockingIOError, ConnectionError):
                continue
            now = time.time()
            if not data:
                finish(fd)
                continue
            sec, ns = struct.unpack("qq", anc[0][2]) if anc else (0, 0)
            kernel = sec + ns / 1e9 if sec else now
            bufs[i] += data
            for op, payload in _frames(bufs[i]):
                if op == 0x9:  # ping: pong, as any client does
                    socks[i].send(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                elif op == 0x1 and payload.startswith(b'{"type":"message"'):
                    if b'"end":true' in payload:
                        finish(fd)
                    else:
                        got.append((kernel, now, payload))
    delays = []
    for kernel, read, payload in got:
        sent = orjson.loads(payload)["data"]["sent"]
        delays.append((kernel - sent, read - sent))
    out.write_bytes(orjson.dumps(delays))
    for sk in socks + slow_socks:
        sk.close()


def fanout(gw: Running, key: str, n: int, slow: int, tmp: Path) -> dict[str, float]:
    """Delay percentiles (ms) over n clients of one room at ROOM_RATE messages/s, the receipts, and the
    server's CPU milliseconds per message. ``slow`` clients are backlogged (their frames queue) before the window opens."""
    base = gw.base
    import multiprocessing

    import orjson
    import redis

    tag = f"{n}x{slow}x{time.monotonic_ns() % 10**9}"
    rooms = (f"candles:BENCH{tag}:1m", f"candles:SLOW{tag}:1m")
    channels = [f"candles:bench:{r.split(':')[1]}:1m" for r in rooms]
    out, ready = tmp / f"delays-{tag}", tmp / f"ready-{tag}"  # per run: a file left by the run before must not start this one
    core = cores()[1]
    proc = multiprocessing.get_context("spawn").Process(target=_clients_process, args=(base, key, rooms, n, slow, out, ready, core))
    proc.start()
    deadline = time.monotonic() + 180
    while not ready.exists():
        if time.monotonic() > deadline or not proc.is_alive():
            proc.kill()
            raise RuntimeError("clients did not connect")
        time.sleep(0.05)
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        r = redis.Redis.from_url(REDIS_URL)
        pad = "x" * 300  # about an in-progress candle's JSON size
        if slow:  # fill the slow client's socket and the gateway's buffer for it: from then on its frames queue
            queued, filler = frames_queued(base), orjson.dumps({"pad": "x" * FILLER_BYTES})
            until = time.monotonic() + 120
            while frames_queued(base) == queued:
                if time.monotonic() > until:
                    raise RuntimeError("the slow client's socket did not fill within 120 s")
                for _ in range(20):
                    r.publish(channels[1], filler)
                time.sleep(0.2)
        cpu0, t0 = gw.cpu_s(), time.monotonic()
        for i in range(int(SECONDS * ROOM_RATE)):
            r.publish(channels[0], orjson.dumps({"sent": time.time(), "i": i, "pad": pad}))
            time.sleep(max(0.0, t0 + (i + 1) / ROOM_RATE - time.monotonic()))
        time.sleep(0.5)  # the last messages' fan-out
        cpu_ms = (gw.cpu_s() - cpu0) * 1000 / int(SECONDS * ROOM_RATE)
        for _ in range(240):  # until every client has seen the end (a gateway starved by other work may take long)
            r.publish(channels[0], orjson.dumps({"end": True}))
            proc.join(0.5)
            if proc.exitcode is not None:
                break
    finally:
        os.sched_setaffinity(0, mine)
    if proc.exitcode != 0:
        proc.kill()
        raise RuntimeError(f"client process failed ({proc.exitcode})")
    delays = orjson.loads(out.read_bytes())
    kernel, read = sorted(d[0] for d in delays), sorted(d[1] for d in delays)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000  # noqa: E731
    return {"p50": pick(kernel, 0.5), "p99": pick(kernel, 0.99), "max": kernel[-1] * 1000, "read_p99": pick(read, 0.99), "receipts": len(delays), "cpu_ms": cpu_ms}


def metric(base: str, name: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    import httpx

    text = httpx.get(f"http://{base}/metrics", timeout=30).text
    m = re.search(re.escape(name) + r" ([\d.e+]+)", text)
    return float(m.group(1)) if m else 0.0


def slow_closed(base: str) -> float:
    """Clients the gateway has closed as slow consumers (its own counter)."""
    return metric(base, 'tickflow_gateway_ws_dropped_total{reason="slow_consumer"}')


def frames_queued(base: str) -> float:
    """Room message frames the gateway queued behind a full socket (its own counter)."""
    return metric(base, 'tickflow_gateway_ws_messages_total{how="queued"}')


# queries


def wrk(target: Running, url: str, key: str, seconds: int = WRK_SECONDS) -> tuple[float, float, float]:
    """(requests/s, p99 ms, server CPU microseconds per request) of wrk (one thread, pinned to the load core) on one URL."""
    cpu0 = target.cpu_s()
    run = subprocess.run(
        ["taskset", "-c", str(cores()[1]), "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {key}", url],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", run.stdout)
    if errors or "Requests/sec" not in run.stdout:
        raise RuntimeError(f"wrk: {errors.group(1) + ' error responses' if errors else run.stdout + run.stderr}")
    requests = int(re.search(r"(\d+) requests in", run.stdout).group(1))  # type: ignore[union-attr]
    cpu_us = (target.cpu_s() - cpu0) * 1e6 / requests if requests else math.nan
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", run.stdout).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", run.stdout)
    return rps, float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)], cpu_us  # type: ignore[union-attr]


def run() -> None:
    from schemas.models import Candle
    from sinks.base import SinkBatch
    from sinks.migrations import migrate_postgres
    from sinks.postgres import PostgresSink
    from streams.gateway.auth import KeyStore

    console.print(f"[bold]gateway[/] ({hardware()})")
    with fresh_pg_database(DEFAULT_PG) as db, tempfile.TemporaryDirectory(prefix="tickflow-bench-gw-") as tmp:
        if db is None:
            console.print("gateway: PostgreSQL unreachable, skipped")
            return
        migrate_postgres(db)
        sink = PostgresSink(db)
        t0 = 1_700_000_040_000
        sink.write(SinkBatch(candle=[Candle("bench", "BENCHUSDT", "1m", t0 + i * 60_000, t0 + i * 60_000 + 59_999, 100.0, 101.0, 99.0, 100.5, 2.0, 200.0, 9, is_final=True) for i in range(500)]))
        sink.close()
        key = KeyStore(db).create("bench", ("read", "stream"), rate_limit=0.0)

        t = table(f"WebSocket fan-out, one room, {ROOM_RATE} messages/s for {SECONDS:.0f} s: Redis PUBLISH -> client socket (median of {RUNS} runs; {TARGETS['fanout']})",
                  "", "p50 ms", "p99 ms", "p99 runs", "p99 vs floor", "max ms", "p99 read by the client process", "server CPU ms per message", "receipts (last run)", "closed as slow")
        slow_label = f"gateway, {CLIENTS:,} + 1 that never reads (its socket full before the window: its frames queue)"
        cases = {"gateway, 1 client": (1, 0), f"bare uvloop fan-out, {CLIENTS:,} clients (floor)": (CLIENTS, 0), f"gateway, {CLIENTS:,} clients": (CLIENTS, 0), slow_label: (CLIENTS, 1)}
        rows: dict[str, list[dict[str, float]]] = {}
        with gateway(db) as gw, server([sys.executable, "-m", "benchmarks.bench_gateway", "floor"], {}) as floor:
            for _ in range(RUNS):  # cases taken turn about: a burst of load elsewhere hits all of them
                for label, (n, slow) in cases.items():
                    rows.setdefault(label, []).append(fanout(floor if "floor" in label else gw, key, n, slow, Path(tmp)))
            closed = slow_closed(gw.base)
        floor_p99 = median([r["p99"] for label, runs in rows.items() if "floor" in label for r in runs])
        for label, runs in rows.items():
            p99s = sorted(r["p99"] for r in runs)
            t.add_row(label, f"{median([r['p50'] for r in runs]):.1f}", f"{median(p99s):.1f}", f"{p99s[0]:.1f}-{p99s[-1]:.1f}", fmt_ratio(median(p99s), floor_p99),
                      f"{median([r['max'] for r in runs]):.1f}", f"{median([r['read_p99'] for r in runs]):.1f}", f"{median([r['cpu_ms'] for r in runs]):.2f}",
                      f"{runs[-1]['receipts']:,.0f}", f"{closed:,.0f} of {RUNS}" if label == slow_label else "-")
        console.print(t)
        console.print(f"load average after the fan-out runs: {load()}")

        if shutil.which("wrk") is None:
            console.print("gateway queries: wrk not installed (apt-get install wrk), skipped")
            return
        path = "/api/v1/candles?symbol=BENCHUSDT&interval=1m&limit=100"
        body = Path(tmp) / "body.json"
        results: dict[str, list[tuple[float, float, float]]] = {}
        with gateway(db) as gw, gateway(db, GATEWAY_CACHE="false") as uncached:
            import httpx

            body.write_bytes(httpx.get(f"http://{gw.base}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10).content)
            with baseline(body) as floor:
                targets = {"Starlette, same bytes (baseline)": (floor, f"http://{floor.base}/"), "gateway, cached (L1)": (gw, f"http://{gw.base}{path}"),
                           "gateway, uncached (PostgreSQL every request)": (uncached, f"http://{uncached.base}{path}")}
                for target, url in targets.values():
                    wrk(target, url, key, seconds=3)  # warm: connections, the key check, the cache
                for _ in range(RUNS):  # turn about, as above
                    for label, (target, url) in targets.items():
                        results.setdefault(label, []).append(wrk(target, url, key))
        q = table(f"GET {path} (100 candles, {body.stat().st_size:,} bytes), wrk 1 thread, {WRK_CONNECTIONS} connections, {WRK_SECONDS} s "
                  f"(median of {RUNS} runs; {TARGETS['queries']})", "", "requests/s", "runs", "p99 ms", "vs baseline", "server CPU us per request")
        floor_rps = median([r[0] for r in results["Starlette, same bytes (baseline)"]])
        cached_us = median([r[2] for r in results["gateway, cached (L1)"]])
        capacity = (f"the cached path's CPU time per request ({cached_us:.0f} us, wrk's share excluded) is {1e6 / cached_us:,.0f} requests/s "
                    "of one core to itself" if cached_us else "")
        for label, runs in results.items():
            rps = sorted(r[0] for r in runs)
            q.add_row(label, f"{median(rps):,.0f}", f"{rps[0]:,.0f}-{rps[-1]:,.0f}", f"{median([r[1] for r in runs]):.1f}", fmt_ratio(median(rps), floor_rps),
                      f"{median([r[2] for r in runs]):.0f}")
        console.print(q)
        console.print(f"load average after the query runs: {load()}; {capacity}")


if __name__ == "__main__" and sys.argv[1:2] == ["floor"]:  # fanout_floor's process: python -m benchmarks.bench_gateway floor --port N
    fanout_floor(int(sys.argv[3]))
