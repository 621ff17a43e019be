"""Candles end to end on Tansu + chdb + PostgreSQL + Redis, and the SIGKILL restart test.

The pipeline runs as the real ``tickflow`` command in subprocesses, configured by environment
variables, so these tests cover the CLI, the worker (agent runtime), checkpoints and every sink.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from agents.candles import CandleBook, CandleConfig
from schemas.codec import AvroCodec
from schemas.models import LiveCandles
from sinks.redis import candle_json
from streams.ingest import run_ingest
from streams.producer import RecordProducer
from streams.settings import Settings
from streams.sources.formats import iter_trades
from streams.sources.replay import ReplaySource
from tests.conftest import REPO, data_path
from tests.kafka_util import read_topic

pytestmark = pytest.mark.integration

PG_ADMIN = "postgresql://127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
XRP = ("freqtrade_binance_xrpeth", "XRP_ETH-trades-ccxt-list.json")
CANDLE_COLS = "exchange, symbol, interval, open_time, close_time, open, high, low, close, volume, quote_volume, trade_count, vwap, taker_buy_volume, first_trade_id, last_trade_id, is_final"


def fresh_database() -> str:
    name = f"tickflow_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def env_for(settings: Settings, *, data_dir: Path, database: str | None, redis_url: str = "") -> dict[str, str]:
    """The environment of a ``tickflow`` subprocess on ``settings``' broker, topics and app id."""
    env = dict(os.environ)
    env.update({f.upper(): getattr(settings.kafka, f) for f in type(settings.kafka).model_fields if f.startswith("topic_")})
    env.update(
        {
            "KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
            "TICKS_PARTITIONS": str(settings.kafka.ticks_partitions),
            "APP_ID": settings.kafka.app_id,
            "TICKFLOW_DATA_DIR": str(data_dir),
            "DATABASE_URL": f"postgresql://127.0.0.1:5432/{database}" if database else "",
            "REDIS_URL": redis_url,
            "METRICS_PORT": "0",
            "AGENT_CHECKPOINT_S": "0.5",
            "LOG_LEVEL": "WARNING",
            "DRAIN_STALL_S": "60",
        }
    )
    return env


def tickflow(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def pg_candles(database: str) -> list[tuple]:
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{database}") as conn:
        return conn.execute(f"SELECT {CANDLE_COLS} FROM candles ORDER BY exchange, symbol, interval, open_time").fetchall()


def pg_indicators(database: str) -> list[tuple]:
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{database}") as conn:
        return conn.execute('SELECT * FROM technical_metrics ORDER BY exchange, symbol, "interval", open_time').fetchall()


def ch_indicators(env: dict[str, str]) -> list[dict]:
    out = tickflow("sql", "SELECT * FROM technical_metrics FINAL ORDER BY exchange, symbol, interval, open_time", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def ch_candles(env: dict[str, str]) -> list[dict]:
    out = tickflow("sql", f"SELECT {CANDLE_COLS} FROM candles FINAL ORDER BY exchange, symbol, interval, open_time", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def expected_candles(path: Path, config: CandleConfig) -> dict[tuple, tuple]:
    """The pure engine over the same trades: what the stores must hold."""
    book = CandleBook(config)
    finals = []
    rows = [r for r in iter_trades(path, "ccxt-json") if isinstance(r, tuple)]
    for i in range(0, len(rows), 200):
        chunk = rows[i : i + 200]
        finals += book.add(chunk[0][0], chunk[0][1], [t for _, _, t in chunk]).candles
    finals += book.close_open_windows().candles
    return {(c.interval, c.open_time): c for c in finals}


@pytest.fixture
def xrp_ticks(topics: Settings) -> Settings:
    import asyncio

    path = data_path(*XRP)
    small = topics.updated(batch_max_trades=5)
    stats = asyncio.run(run_ingest(ReplaySource(path, max_trades=5, max_ms=50), RecordProducer(small), small))
    assert stats.trades == 12_477
    return topics


def test_replay_until_drained_fills_both_stores_equal_to_the_engine(xrp_ticks: Settings, tmp_path: Path) -> None:
    db = fresh_database()
    try:
        env = env_for(xrp_ticks, data_dir=tmp_path / "a", database=db, redis_url="redis://127.0.0.1:6379/0")
        r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        run = tickflow("run", "--no-source", "--until-drained", "--quiet", env=env)
        assert run.returncode == 0, run.stderr[-3000:]

        want = expected_candles(data_path(*XRP), CandleConfig(intervals=tuple(Settings().agents.intervals)))
        pg = pg_candles(db)
        ch = ch_candles(env)
        assert len(pg) == len(want) == len(ch)
        for row in pg:
            c = want[(row[2], int(row[3].timestamp() * 1000))]
            assert (row[5], row[6], row[7], row[8], row[11]) == (c.open, c.high, c.low, c.close, c.trade_count)
            assert row[9] == pytest.approx(c.volume, rel=1e-9)
        for row in ch:
            assert row["trade_count"] == want[(row["interval"], _ms(row["open_time"]))].trade_count
        one_minute = [c for c in want.values() if c.interval == "1m"]
        assert len(one_minute) == 3560  # every minute of the exchange's own klines, flat ones included

        latest = r.get("latest:candles:binance:XRP/ETH:1m")
        assert latest is not None and json.loads(latest)["symbol"] == "XRP/ETH"
    finally:
        drop_database(db)


@pytest.mark.parametrize("where", ["redis", "kafka"])
def test_subscribers_get_the_updates_in_order_then_the_final_candles(topics: Settings, tmp_path: Path, where: str) -> None:
    """``tickflow run`` on a paced source with a Redis subscriber: in-progress candles of every
    interval, in order per channel, then the final candles, which the snapshots keep. With
    ``CANDLE_UPDATES=redis`` (the default) updates go from the worker straight to Redis and
    ``candles-live`` stays empty; with ``kafka`` every update on ``candles-live`` is published once,
    by the Redis sink."""
    exchange = f"live{uuid.uuid4().hex[:8]}"
    env = env_for(topics, data_dir=tmp_path, database=None, redis_url=REDIS)
    env.update({"CANDLE_UPDATES": where, "CANDLE_UPDATE_MS": "50"})
    r = redis.Redis.from_url(REDIS)
    pubsub = r.pubsub()
    pubsub.psubscribe(f"candles:{exchange}:*")
    while (pubsub.get_message(timeout=1.0) or {}).get("type") != "psubscribe":
        pass
    got: list[tuple[str, bytes]] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.1)
            if msg is not None and msg["type"] == "pmessage":
                got.append((msg["channel"].decode(), msg["data"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        run = tickflow("run", "--source", "synthetic", "--symbols", "AAA,BBB", "--rate", "400", "--limit", "1600", "--exchange", exchange, "--until-drained", "--quiet", env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        time.sleep(0.5)
    finally:
        stop.set()
        listener.join(5)
        pubsub.close()
    live = AvroCodec("tickflow.LiveCandles")
    sent = [c for m in read_topic(topics, topics.kafka.topic_candle_updates) for c in LiveCandles.from_avro(live.decode(m.value())).candles]
    docs = [(channel, json.loads(data)) for channel, data in got]
    updates = [(channel, data) for channel, data in got if not json.loads(data)["is_final"]]
    if where == "kafka":
        assert sorted(data for _, data in updates) == sorted(candle_json(c) for c in sent)
    else:
        assert sent == [] and len(updates) > 100
    assert {channel.rsplit(":", 1)[1] for channel, _ in updates} == set(Settings().agents.intervals)
    for channel in {c for c, _ in updates}:
        counts = [(doc["open_time"], doc["trade_count"]) for c, doc in docs if c == channel and not doc["is_final"]]
        assert counts == sorted(counts), f"updates out of order on {channel}"
    finals = [doc for _, doc in docs if doc["is_final"]]
    assert len({json.dumps(d, sort_keys=True) for d in finals}) == len(finals), "a final candle was published twice"
    assert sum(doc["trade_count"] for doc in finals if doc["interval"] == "1m") == 1600  # every trade in one final minute
    for symbol in ("AAA", "BBB"):
        snapshot = json.loads(r.get(f"latest:candles:{exchange}:{symbol}:1m"))
        assert snapshot["is_final"] is True
        assert snapshot == max((d for d in finals if d["symbol"] == symbol and d["interval"] == "1m"), key=lambda d: d["open_time"])
    for key in r.scan_iter(f"latest:candles:{exchange}:*"):
        r.delete(key)


def _ms(value: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(value).replace(tzinfo=__import__("datetime").UTC).timestamp() * 1000)


def test_a_sink_that_cannot_open_its_store_fails_the_run_with_its_name(topics: Settings, tmp_path: Path) -> None:
    env = env_for(topics, data_dir=tmp_path / "a", database=None)
    env["CLICKHOUSE_URL"] = "http://127.0.0.1:1/default"  # nothing listens there
    run = tickflow("run", "--no-source", "--until-drained", "--quiet", env=env, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "sink failed:" in run.stderr and "sink clickhouse exited" in run.stderr
