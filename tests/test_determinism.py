"""A replay gives the same bytes: two ``tickflow run --until-drained`` of one file into fresh stores
leave byte-identical ordered dumps of the derived tables in ClickHouse and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from streams.broker import free_port
from tests.conftest import REPO, data_path
from tests.test_candles_e2e import drop_database, fresh_database

pytestmark = pytest.mark.integration

TABLES = {"candles": "exchange, symbol, interval, open_time", "technical_metrics": "exchange, symbol, interval, open_time"}


def tickflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", *args], env=env, cwd=REPO, capture_output=True, timeout=300)


def replay_and_dump(path: Path, data_dir: Path) -> dict[str, bytes]:
    """The README's replay command with default settings (its own embedded broker), then ordered
    dumps of every derived table from both stores."""
    database = fresh_database()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOPIC_", "KAFKA_", "APP_ID"))}
        env.update({"TICKFLOW_DATA_DIR": str(data_dir), "DATABASE_URL": f"postgresql://127.0.0.1:5432/{database}", "BROKER_PORT": str(free_port()),
                    "METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "REDIS_URL": ""})
        run = tickflow("run", "--source", f"replay:{path}", "--until-drained", "--quiet", env=env)
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        return dump_tables(env)
    finally:
        drop_database(database)


def dump_tables(env: dict[str, str]) -> dict[str, bytes]:
    """Ordered dumps of every derived table from the ClickHouse store (``tickflow sql``) and the
    PostgreSQL database of ``env``."""
    dumps = {}
    for table, order in TABLES.items():
        out = tickflow("sql", f"SELECT * FROM {table} FINAL ORDER BY {order}", "--format", "csv", env=env)
        assert out.returncode == 0, out.stderr.decode()[-3000:]
        dumps[f"clickhouse.{table}"] = out.stdout
        with psycopg.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
            quoted = order.replace("interval", '"interval"')
            with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY {quoted}) TO STDOUT") as copy:
                dumps[f"postgres.{table}"] = b"".join(bytes(chunk) for chunk in copy)
    return dumps


def test_two_replays_give_byte_identical_tables(tmp_path: Path) -> None:
    path = data_path("freqtrade_binance_xrpeth", "XRP_ETH-trades-ccxt-list.json")
    first = replay_and_dump(path, tmp_path / "first")
    second = replay_and_dump(path, tmp_path / "second")
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name].count(b"\n") > 100, f"{name} has almost no rows"
        assert first[name] == second[name], f"{name} differs between two replays of the same file"
