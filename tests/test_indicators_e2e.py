"""Indicators end to end: the real ``tickflow run`` fills ``technical_metrics`` in both stores.

The reference is the pure IndicatorEngine over the final candles the same run stored, so this
checks the wiring (agent, topic, sinks, migrations), not the indicator maths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import psycopg
import pytest

from agents.indicators import VALUE_FIELDS, IndicatorEngine
from schemas.models import Candle, Indicators
from sinks.base import columns_of
from streams.settings import Settings
from tests.test_candles_e2e import CANDLE_COLS, drop_database, env_for, fresh_database, tickflow, xrp_ticks  # noqa: F401

INDICATOR_COLUMNS = columns_of("indicators")

pytestmark = pytest.mark.integration


def _ms(value) -> int:  # noqa: ANN001 - a timestamptz from psycopg
    return int(value.timestamp() * 1000)


def stored_final_candles(database: str) -> list[Candle]:
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{database}") as conn:
        rows = conn.execute(f"SELECT {CANDLE_COLS}, revision FROM candles ORDER BY exchange, symbol, interval, open_time").fetchall()
    return [Candle(*r[:3], _ms(r[3]), _ms(r[4]), *r[5:]) for r in rows]


def stored_indicators(database: str) -> list[Indicators]:
    cols = ", ".join('"interval"' if c == "interval" else c for c in INDICATOR_COLUMNS)
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{database}") as conn:
        rows = conn.execute(f"SELECT {cols} FROM technical_metrics ORDER BY exchange, symbol, interval, open_time").fetchall()
    return [Indicators(r[0], r[1], r[2], _ms(r[3]), *r[4:]) for r in rows]


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_replay_until_drained_fills_technical_metrics_equal_to_the_engine(xrp_ticks: Settings, tmp_path: Path) -> None:  # noqa: F811
    db = fresh_database()
    try:
        env = env_for(xrp_ticks, data_dir=tmp_path / "a", database=db)
        run = tickflow("run", "--no-source", "--until-drained", "--quiet", env=env)
        assert run.returncode == 0, run.stderr[-3000:]

        candles = stored_final_candles(db)
        assert candles and all(c.is_final for c in candles)
        engine = IndicatorEngine()
        want = {}
        for c in candles:  # one series after another, each in open_time order
            (rec,) = engine.process(c)
            want[(rec.interval, rec.open_time)] = rec

        got = stored_indicators(db)
        assert len(got) == len(want)
        per_interval: dict[str, int] = {}
        for ind in got:
            per_interval[ind.interval] = per_interval.get(ind.interval, 0) + 1
            ref = want[(ind.interval, ind.open_time)]
            assert (ind.exchange, ind.symbol, ind.close, ind.candle_revision) == (ref.exchange, ref.symbol, ref.close, ref.candle_revision)
            wrong = [f for f in VALUE_FIELDS if not _same(getattr(ind, f), getattr(ref, f))]
            assert not wrong, (ind.interval, ind.open_time, {f: (getattr(ind, f), getattr(ref, f)) for f in wrong})
        assert per_interval == {i: sum(1 for c in candles if c.interval == i) for i in Settings().agents.intervals}
        assert any(ind.ma200 is not None for ind in got if ind.interval == "1m")  # long enough to fill every indicator

        out = tickflow("sql", "SELECT count() AS n FROM technical_metrics FINAL", "--format", "json", env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        assert int(json.loads(out.stdout.splitlines()[0])["n"]) == len(want)
    finally:
        drop_database(db)
