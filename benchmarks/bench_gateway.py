"""Gateway load on loopback, bounded in time: WebSocket fan-out latency and cached query throughput.

The gateway runs as `tickflow serve` in its own process (uvicorn, uvloop); the WebSocket clients
run in another process, the publisher in this one. A message's delay runs from just before its
PUBLISH to Redis to its receipt by each client, so it includes the client process's own work: with
1,000 clients on one event loop the last client reads a message after the 999 before it. The
baseline is the same measurement with one client, in the same run. Queries are driven by wrk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import console, fresh_pg_database, median, table
from streams.broker import free_port
from streams.settings import StoreSettings

DEFAULT_PG = StoreSettings.model_fields["database_url"].default
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
ROOM_RATE = 10  # messages/s into the room: a symbol's in-progress updates at CANDLE_UPDATE_MS=25 are at most 40/s over all its intervals
SECONDS = 5.0
RUNS = 3


@contextlib.contextmanager
def gateway(db: str, **env: str) -> Iterator[str]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="tickflow-bench-gateway-", suffix=".log", delete=False)  # a pipe nobody reads would block it
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "serve", "--port", str(port)],
        env={**os.environ, "DATABASE_URL": db, "REDIS_URL": REDIS_URL, "METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "GATEWAY_WS_QUEUE": "1000", **env},
        stdout=log, stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {Path(log.name).read_text()[-500:]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    except BaseException:
        console.print(f"gateway log: {Path(log.name).read_text()[-1500:]}")
        raise
    finally:
        Path(log.name).unlink(missing_ok=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _clients_process(base: str, key: str, room: str, n: int, slow: int, out: Path, ready: Path) -> None:
    """n reading clients (websockets) and ``slow`` clients that never read (raw sockets); delays to ``out``."""
    import base64

    import orjson
    import websockets

    async def main() -> None:
        delays: list[float] = []
        socks = []
        for _ in range(slow):
            sk = socket.socket()
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            host, port = base.split(":")
            sk.connect((host, int(port)))
            sk.sendall(f"GET /ws?token={key} HTTP/1.1\r\nHost: {base}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            sk.recv(4096)
            body = orjson.dumps({"op": "subscribe", "room": room})
            mask = os.urandom(4)
            sk.sendall(bytes([0x81, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
            socks.append(sk)

        async def client() -> None:
            async with websockets.connect(f"ws://{base}/ws?token={key}", max_size=2**22, ping_interval=None) as ws:
                await ws.send(orjson.dumps({"op": "subscribe", "room": room}))
                while True:
                    m = orjson.loads(await ws.recv())
                    if m["type"] == "subscribed":
                        break
                started.append(1)
                while True:
                    try:
                        m = orjson.loads(await ws.recv())
                    except websockets.ConnectionClosed:
                        return  # closed as a slow consumer: the gateway counts it
                    if m["type"] == "message":
                        if m["data"].get("end"):
                            return
                        delays.append(time.time() - m["data"]["sent"])

        started: list[int] = []
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(client()))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # connect in waves: the accept backlog and the handshakes
        while len(started) < n:
            await asyncio.sleep(0.05)
        ready.write_text("ok")
        await asyncio.wait_for(asyncio.gather(*tasks), SECONDS + 60)
        out.write_bytes(orjson.dumps(delays))
        for sk in socks:
            sk.close()

    asyncio.run(main())


def fanout(base: str, key: str, n: int, slow: int, tmp: Path) -> tuple[float, float, int]:
    """(p50, p99) delay in ms over n clients of one room at ROOM_RATE messages/s, and the receipts."""
    import multiprocessing

    import orjson
    import redis

    room = f"candles:BENCH{n}x{slow}x{time.monotonic_ns() % 10**9}:1m"
    out, ready = tmp / f"delays-{room}", tmp / f"ready-{room}"  # per run: a file left by the run before must not start this one
    channel = "candles:bench:" + room.split(":")[1] + ":1m"
    proc = multiprocessing.get_context("spawn").Process(target=_clients_process, args=(base, key, room, n, slow, out, ready))
    proc.start()
    deadline = time.monotonic() + 120
    while not ready.exists():
        if time.monotonic() > deadline or not proc.is_alive():
            proc.kill()
            raise RuntimeError("clients did not connect")
        time.sleep(0.05)
    r = redis.Redis.from_url(REDIS_URL)
    pad = "x" * 300  # about an in-progress candle's JSON size
    for i in range(int(SECONDS * ROOM_RATE)):
        r.publish(channel, orjson.dumps({"sent": time.time(), "i": i, "pad": pad}))
        time.sleep(1 / ROOM_RATE)
    for _ in range(600):  # until every client has seen the end (a slow one may still be reading)
        r.publish(channel, orjson.dumps({"end": True}))
        proc.join(0.1)
        if proc.exitcode is not None:
            break
    if proc.exitcode != 0:
        proc.kill()
        raise RuntimeError(f"client process failed ({proc.exitcode})")
    delays = sorted(orjson.loads(out.read_bytes()))
    pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] * 1000  # noqa: E731
    return pick(0.5), pick(0.99), len(delays)


def slow_closed(base: str) -> float:
    """Clients the gateway has closed as slow consumers (its own counter)."""
    import httpx

    text = httpx.get(f"http://{base}/metrics", timeout=5).text
    m = re.search(r'tickflow_gateway_ws_dropped_total\{reason="slow_consumer"\} ([\d.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def wrk(base: str, key: str, path: str, seconds: int = 5, connections: int = 64) -> tuple[float, float]:
    """(requests/s, p99 ms) of wrk on one URL."""
    run = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {key}", f"http://{base}{path}"],
        capture_output=True, text=True, timeout=seconds + 30,
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", run.stdout).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", run.stdout)
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", run.stdout)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses")
    return rps, float(m.group(1)) * unit  # type: ignore[union-attr]


def run() -> None:
    from sinks.base import SinkBatch
    from sinks.migrations import migrate_postgres
    from sinks.postgres import PostgresSink
    from schemas.models import Candle
    from streams.gateway.auth import KeyStore

    console.print(f"[bold]gateway[/] ({os.cpu_count()} cores; gateway, clients and Redis on this machine, loopback)")
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

        t = table(f"WebSocket fan-out, one room, {ROOM_RATE} messages/s for {SECONDS:.0f} s: Redis PUBLISH -> client receipt (median of {RUNS} runs)",
                  "clients", "p50 ms", "p99 ms", "p99 runs", "receipts (last run)", "clients closed as slow (so far)")
        with gateway(db) as base:
            for n, slow in ((1, 0), (1000, 0), (1000, 1)):
                p50s, p99s, count = [], [], 0
                for _ in range(RUNS):
                    p50, p99, count = fanout(base, key, n, slow, Path(tmp))
                    p50s.append(p50)
                    p99s.append(p99)
                closed = slow_closed(base)
                label = f"{n:,}" + (f" + {slow} that never reads" if slow else "") + (" (baseline)" if n == 1 else "")
                t.add_row(label, f"{median(p50s):.1f}", f"{median(p99s):.1f}", "-".join(f"{v:.1f}" for v in sorted(p99s)[:: max(1, RUNS - 1)]), f"{count:,}", f"{closed:,.0f}")
        console.print(t)

        if shutil.which("wrk") is None:
            console.print("gateway queries: wrk not installed (apt-get install wrk), skipped")
            return
        path = "/api/v1/candles?symbol=BENCHUSDT&interval=1m&limit=100"
        q = table("GET /api/v1/candles (100 rows), wrk 2 threads, 64 connections, 5 s (median of 3 runs)", "", "requests/s", "p99 ms")
        for label, env in (("cached (L1)", {}), ("uncached (PostgreSQL every request)", {"GATEWAY_CACHE": "false"})):
            with gateway(db, **env) as base:
                wrk(base, key, path, seconds=1)  # warm: connections, the key check, the cache
                results = [wrk(base, key, path) for _ in range(3)]
            q.add_row(label, f"{median([r[0] for r in results]):,.0f}", f"{median([r[1] for r in results]):.1f}")
        console.print(q)
