"""On-chain end to end: the sources' records through ``tickflow run`` (the runtime, the on-chain agent,
every sink) into ClickHouse, PostgreSQL and Redis; a run stopped halfway and resumed equals one run."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import psycopg
import pytest
import redis

from streams.ingest import run_ingest
from streams.producer import RecordProducer
from streams.settings import Settings
from streams.sources.bitcoind_replay import BitcoindReplaySource
from streams.sources.coinmetrics import CoinMetricsSource
from streams.topics import ensure_topics, isolated
from tests.conftest import data_path
from tests.test_candles_e2e import drop_database, env_for, fresh_database, tickflow

pytestmark = pytest.mark.integration

REDIS_DB = "redis://127.0.0.1:6379/4"
COLUMNS = "asset, {day} AS day_ms, source, revision, mvrv, nupl, realized_price_usd, nvt_90d, volatility_30d, active_addresses_30d, tx_count, fees_native, block_count"
PG_DAY, CH_DAY = "(extract(epoch FROM day) * 1000)::int8", "toUnixTimestamp64Milli(day)"
DAY_2020_07_27, DAY_2010_04_10 = 1_595_808_000_000, 1_270_857_600_000


def ingest(settings: Settings, *sources) -> None:  # noqa: ANN002
    async def run() -> None:
        producer = RecordProducer(settings)
        for src in sources:
            await run_ingest(src, producer, settings, source_name="test")
        producer.close()

    asyncio.run(run())


def pg_rows(db: str) -> list[tuple]:
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{db}") as conn:
        return conn.execute(f"SELECT {COLUMNS.format(day=PG_DAY)} FROM onchain_metrics ORDER BY asset, day, source").fetchall()


def ch_rows(env: dict[str, str]) -> list[tuple]:
    out = tickflow("sql", f"SELECT {COLUMNS.format(day=CH_DAY)} FROM onchain_metrics FINAL ORDER BY asset, day, source", "--format", "csv", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return [tuple(r) for r in list(csv.reader(out.stdout.splitlines()))[1:]]


BLOCK_COLUMNS = "height, hash, {time} AS block_time_ms, revision, retracted, tx_count, fees_native, transfer_volume_native, active_addresses"


def pg_blocks(db: str) -> list[tuple]:
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{db}") as conn:
        return conn.execute(f"SELECT {BLOCK_COLUMNS.format(time=PG_DAY.replace('day', 'block_time'))} FROM onchain_block_metrics ORDER BY height, hash").fetchall()


def as_text(rows: list[tuple]) -> list[tuple]:
    return [tuple("" if v is None else str(v) for v in r) for r in rows]


def test_coinmetrics_and_blocks_into_every_store_and_a_resumed_run_equals_one_run(topics: Settings, tmp_path: Path) -> None:
    btc = data_path("coinmetrics_onchain", "btc.csv")
    lines = btc.read_text().splitlines()
    first, second = tmp_path / "first" / "btc.csv", tmp_path / "second" / "btc.csv"
    for path, part in ((first, lines[:2001]), (second, [lines[0], *lines[2001:]])):
        path.parent.mkdir()
        path.write_text("\n".join(part) + "\n")
    blocks = f"{data_path('bitcoin_onchain_sample')}/*rpc_response*.json"
    resumed = isolated(topics, "r")
    ensure_topics(resumed)
    db_a, db_b = fresh_database(), fresh_database()
    try:
        # One run over everything
        ingest(topics, CoinMetricsSource(btc), BitcoindReplaySource(blocks))
        env_a = env_for(topics, data_dir=tmp_path / "a", database=db_a, redis_url=REDIS_DB)
        run = tickflow("run", "--no-source", "--until-drained", "--quiet", env=env_a)
        assert run.returncode == 0, run.stderr[-3000:]
        # The same input in two runs, the agent resuming from its checkpoint in the second
        env_b = env_for(resumed, data_dir=tmp_path / "b", database=db_b)
        ingest(resumed, CoinMetricsSource(first))
        assert tickflow("run", "--no-source", "--until-drained", "--quiet", env=env_b).returncode == 0
        assert len(pg_rows(db_b)) == 2000
        ingest(resumed, CoinMetricsSource(second), BitcoindReplaySource(blocks))
        again = tickflow("run", "--no-source", "--until-drained", "--quiet", env=env_b)
        assert again.returncode == 0, again.stderr[-3000:]

        a = pg_rows(db_a)
        assert len(a) == 4224 + 3  # every BTC day, and the three days of the sample blocks
        assert pg_rows(db_b) == a
        assert ch_rows(env_a) == as_text(a)
        assert ch_rows(env_b) == as_text(a)
        last = a[-1] if a[-1][2] == "coinmetrics" else a[-2]
        assert last[1] == DAY_2020_07_27 and abs(last[4] / 1.87222938891389 - 1) < 1e-9
        block_day = next(r for r in a if r[2] == "bitcoind" and r[1] == DAY_2010_04_10)
        assert block_day[10:] == (5, 0.0, 3)
        # The per-block rows, in both stores
        blocks_a = pg_blocks(db_a)
        assert [(r[0], r[5], r[6]) for r in blocks_a] == [(0, 1, 0.0), (1, 1, 0.0), (50000, 1, 0.0), (50001, 3, 0.0), (50002, 1, 0.0)]
        assert pg_blocks(db_b) == blocks_a
        out = tickflow("sql", f"SELECT {BLOCK_COLUMNS.format(time='toUnixTimestamp64Milli(block_time)')} FROM onchain_block_metrics FINAL ORDER BY height, hash",
                       "--format", "csv", env=env_a)
        assert [tuple(r) for r in list(csv.reader(out.stdout.splitlines()))[1:]] == as_text(blocks_a)
        snapshot = redis.Redis.from_url(REDIS_DB).get("latest:onchain:btc")
        assert snapshot is not None and b'"day":%d' % DAY_2020_07_27 in snapshot and b'"day_iso":"2020-07-27T00:00:00.000Z"' in snapshot
    finally:
        drop_database(db_a)
        drop_database(db_b)
        redis.Redis.from_url(REDIS_DB).delete("latest:onchain:btc")


def test_cli_rejects_a_missing_file_with_the_reason(topics: Settings, tmp_path: Path) -> None:
    env = env_for(topics, data_dir=tmp_path, database=None)
    out = tickflow("run", "--source", f"coinmetrics:{tmp_path}/nope.csv", "--until-drained", "--quiet", env=env, timeout=60)
    assert out.returncode != 0 and "no Coin Metrics file" in out.stderr
