"""Shared by the gateway tests: a throwaway PostgreSQL database, a gateway on a free port, candles to store."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import uvicorn

from schemas.models import Candle, Indicators
from sinks.migrations import migrate_postgres
from streams.broker import free_port
from streams.settings import Settings

ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = 1_700_000_040_000  # ms, a minute boundary


@contextmanager
def pg_database() -> Iterator[str]:
    """A migrated database of its own, dropped afterwards (skips when PostgreSQL is unreachable)."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {ADMIN_URL} unreachable: {exc}")
    name = f"tickflow_gw_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)
    try:
        migrate_postgres(url)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def running_gateway(settings: Settings, store=None) -> Iterator[str]:  # noqa: ANN001
    """The gateway under uvicorn as `tickflow serve` configures it, in a thread; yields its base URL."""
    from streams.gateway.server import config

    port = free_port()
    server = uvicorn.Server(config(settings, "127.0.0.1", port, store))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def candles(exchange: str, symbol: str, n: int, interval: str = "1m", start: int = T0) -> list[Candle]:
    step = 60_000 if interval == "1m" else 300_000
    out = []
    for i in range(n):
        o = 100.0 + i
        out.append(Candle(exchange, symbol, interval, start + i * step, start + (i + 1) * step - 1, o, o + 2.5, o - 1.25, o + 0.5, 3.0 + i, 300.0, 7 + i,
                          vwap=o + 0.1 if i % 2 else None, taker_buy_volume=1.0, first_trade_id=str(i), is_final=True, revision=0))
    return out


def indicators_of(cs: list[Candle]) -> list[Indicators]:
    return [Indicators(c.exchange, c.symbol, c.interval, c.open_time, c.close, 0, rsi=50.0 + i, ma50=c.close - 1) for i, c in enumerate(cs)]
