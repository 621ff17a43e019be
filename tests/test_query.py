"""Read queries on embedded chdb from other processes: through the process that has it open (the
ClickHouse sink's), and by opening it when that process is gone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from sinks.query import QueryError, owner_file, query
from streams.settings import Settings
from tests.conftest import REPO

T0 = 1_700_000_000_000

OWNER = """
import sys
from schemas.models import Trade, TradeBatch
from streams.observability import configure_logging
from sinks.base import SinkBatch
from sinks.runner import open_sinks
from streams.settings import Settings

configure_logging("WARNING")
(sink,) = open_sinks(Settings(tickflow_data_dir=sys.argv[1], database_url="", redis_url=""))
trades = [Trade(str(i), (%d + i * 1000) * 1000, 100.0 + i, 1.0, "buy") for i in range(5)]
sink.write(SinkBatch(trade_batch=[TradeBatch("x", "BTC/USDT", 0, trades[:3]), TradeBatch("x", "ETH/USDT", 0, trades[3:])]))
print("ready", flush=True)
sys.stdin.readline()
sink.close()
""" % T0


def start_owner(tmp_path: Path) -> Iterator[tuple[Settings, subprocess.Popen]]:
    """A process holding embedded chdb with five trades, as the ClickHouse sink does."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            pytest.fail(f"the owner did not start: {proc.communicate()[1][-3000:]}")
        yield Settings(tickflow_data_dir=tmp_path), proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def shared_owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, subprocess.Popen]]:
    yield from start_owner(tmp_path_factory.mktemp("owner"))


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[tuple[Settings, subprocess.Popen]]:
    yield from start_owner(tmp_path)


def sql(settings: Settings, text: str) -> subprocess.CompletedProcess:
    env = {"TICKFLOW_DATA_DIR": str(settings.stores.tickflow_data_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "streams", "sql", text, "--format", "json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_the_owner_answers_typed_rows_bound_parameters_and_concurrent_callers(shared_owner: tuple[Settings, subprocess.Popen]) -> None:
    settings, _ = shared_owner
    result = query(settings, "SELECT symbol, trade_id, price, ts FROM trades ORDER BY trade_id")
    assert result.column_names == ("symbol", "trade_id", "price", "ts")
    assert [r[:3] for r in result.rows] == [("BTC/USDT", "0", 100.0), ("BTC/USDT", "1", 101.0), ("BTC/USDT", "2", 102.0), ("ETH/USDT", "3", 103.0), ("ETH/USDT", "4", 104.0)]
    assert result.rows[1][3] == datetime.fromtimestamp((T0 + 1000) / 1000, UTC)
    bound = query(settings, "SELECT count() AS n FROM trades WHERE symbol = {symbol:String}", {"symbol": "ETH/USDT"})
    assert bound.rows == [(2,)]
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda i: query(settings, f"SELECT count() + {i} FROM trades").rows[0][0] - i, range(40)))
    assert counts == [5] * 40


def test_writes_and_bad_queries_come_back_as_errors_and_the_owner_keeps_serving(shared_owner: tuple[Settings, subprocess.Popen]) -> None:
    settings, proc = shared_owner
    with pytest.raises(QueryError, match="readonly"):
        query(settings, "INSERT INTO trades (symbol) VALUES ('Z')")
    with pytest.raises(QueryError, match="readonly"):
        query(settings, "DROP TABLE trades")
    with pytest.raises(QueryError, match="Syntax error"):
        query(settings, "SELEC 1")
    with pytest.raises(QueryError, match="UNKNOWN_TABLE"):
        query(settings, "SELECT * FROM nowhere")
    info = json.loads(owner_file(settings.stores.tickflow_data_dir.resolve() / "clickhouse").read_text())
    assert httpx.post(f"{info['url']}/query", json={"sql": "SELECT 1"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert proc.poll() is None
    assert query(settings, "SELECT count() FROM trades").rows == [(5,)]


def test_tickflow_sql_reads_through_the_owner_then_opens_the_store_when_it_died(owner: tuple[Settings, subprocess.Popen]) -> None:
    settings, proc = owner
    done = sql(settings, "SELECT symbol, count() AS n FROM trades GROUP BY symbol ORDER BY symbol")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [{"symbol": "BTC/USDT", "n": 3}, {"symbol": "ETH/USDT", "n": 2}]
    proc.send_signal(signal.SIGKILL)  # its address file stays behind, naming a dead process
    proc.wait()
    assert owner_file(settings.stores.tickflow_data_dir.resolve() / "clickhouse").exists()
    done = sql(settings, "SELECT count() AS n FROM trades")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"n": 5}
    failed = sql(settings, "SELECT * FROM nowhere")
    assert failed.returncode == 1 and "query failed" in failed.stderr and "Traceback" not in failed.stderr


def test_an_unreachable_clickhouse_server_is_a_query_error() -> None:
    with pytest.raises(QueryError, match="Connection refused"):
        query(Settings(clickhouse_url="http://default:@127.0.0.1:1/default"), "SELECT 1")
