"""The query API on ClickHouse (embedded chdb) answers what `tickflow sql` answers on the same store.

chdb holds one data directory per process and locks it, so the gateway side runs in a subprocess
of its own, then `tickflow sql` in another, as two processes would share a store in turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.gateway_util import REDIS_URL, candles, indicators_of, pg_database

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


def gateway_side(data_dir: str, pg_url: str, symbol: str) -> None:
    """In the subprocess: store candles in chdb, answer through the gateway app, print the answers."""
    import httpx

    from sinks.base import SinkBatch
    from sinks.clickhouse import ClickHouseSink, connect
    from sinks.migrations import migrate_clickhouse
    from streams.gateway.app import create_app
    from streams.gateway.auth import KeyStore
    from sinks.query import QueryServer
    from streams.gateway.store import ClickHouseStore, store_query
    from streams.settings import Settings

    settings = Settings(tickflow_data_dir=Path(data_dir), database_url=pg_url, redis_url=REDIS_URL, metrics_port=0)
    client = connect(settings.stores.clickhouse_dsn)
    migrate_clickhouse(client)
    cs = candles("gwch", symbol, 20)
    sink = ClickHouseSink(client)
    sink.write(SinkBatch(candle=cs, indicators=indicators_of(cs)))
    revised = cs[-1]
    revised.revision, revised.close = 1, 999.0
    sink.write(SinkBatch(candle=[revised]))  # FINAL must show only this revision
    key = KeyStore(pg_url).create("ch", ("read",))
    QueryServer(settings.stores.clickhouse_dsn).start()  # as the ClickHouse sink does: the gateway reads through sinks.query
    app = create_app(settings, ClickHouseStore(store_query(settings)))

    async def go() -> dict:
        gw = app.state.gateway
        await gw.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", headers={"Authorization": f"Bearer {key}"}) as http:
                out = {"candles": (await http.get("/api/v1/candles", params={"symbol": symbol, "interval": "1m", "limit": "10"})).json()}
                client.command("DROP TABLE technical_metrics")
                r = await http.get("/api/v1/indicators", params={"symbol": symbol, "interval": "1m"})
                out["missing"] = [r.status_code, r.json()]
                return out
        finally:
            await gw.close()

    print(json.dumps(asyncio.run(go())))


def test_candles_equal_tickflow_sql(tmp_path: Path) -> None:
    symbol = "CHTESTUSDT"
    with pg_database() as pg_url:
        run = subprocess.run(
            [sys.executable, "-c", f"from tests.test_gateway_clickhouse import gateway_side; gateway_side({str(tmp_path)!r}, {pg_url!r}, {symbol!r})"],
            cwd=REPO, capture_output=True, text=True, timeout=150,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    answers = json.loads(run.stdout.strip().splitlines()[-1])
    env = {**os.environ, "TICKFLOW_DATA_DIR": str(tmp_path)}
    sql = subprocess.run(
        [sys.executable, "-m", "streams", "sql", f"SELECT * FROM candles FINAL WHERE symbol = '{symbol}' AND `interval` = '1m' ORDER BY open_time DESC LIMIT 10", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert sql.returncode == 0, sql.stderr[-2000:]
    want = [json.loads(line) for line in reversed(sql.stdout.strip().splitlines())]
    got = answers["candles"]["rows"]
    assert len(got) == len(want) == 10
    for g, w in zip(got, want, strict=True):
        for col, value in w.items():
            if col in ("open_time", "close_time"):
                assert g[col] == int(datetime.fromisoformat(value).timestamp() * 1000), col
            else:
                assert g[col] == value, col
    assert got[-1]["revision"] == 1 and got[-1]["close"] == 999.0
    status, body = answers["missing"]
    assert status == 503 and "technical_metrics" in body["error"]["message"] and "tickflow migrate" in body["error"]["message"]
