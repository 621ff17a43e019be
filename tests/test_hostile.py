"""Hostile input: the trade checks alone, then bad records of every kind mixed into a good stream
through every role (``tickflow run``: ingest, worker, the ClickHouse and PostgreSQL sinks).

Every bad item must end in ``dlq`` with its code (duplicates and late trades counted instead),
no role may crash or stall, and the good records must give byte for byte the tables of a run of
the good records alone. ``tests/chaos/test_hostile.py`` runs the same with 10,000 bad records.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from schemas.codec import AvroCodec
from schemas.models import DeadLetter, LateTrade, Trade, TradeBatch
from schemas.validation import (
    MAX_FUTURE_US,
    MIN_TS_US,
    Reason,
    check_trade_batch,
    reason_code,
    split_trades,
    symbol_problem,
    trade_problem,
)
from streams.settings import Settings
from streams.topics import ensure_topics, isolated
from tests.hostile import Stream, build, write_file
from tests.kafka_util import read_topic
from tests.test_candles_e2e import drop_database, env_for, fresh_database, tickflow
from tests.chaos.harness import dump_with
from tests.test_runtime import produce_raw

NOW = 1_800_000_000_000_000
GOOD = Trade("42", 1_700_000_000_000_000, 100.0, 0.5, "buy")


@pytest.mark.parametrize(
    ("trade", "code"),
    [
        (GOOD._replace(price=math.nan), Reason.BAD_PRICE),
        (GOOD._replace(price=math.inf), Reason.BAD_PRICE),
        (GOOD._replace(price=-1.0), Reason.BAD_PRICE),
        (GOOD._replace(price=0.0), Reason.BAD_PRICE),
        (GOOD._replace(price=1e300), Reason.BAD_PRICE),
        (GOOD._replace(price="100"), Reason.BAD_PRICE),
        (GOOD._replace(amount=math.nan), Reason.BAD_AMOUNT),
        (GOOD._replace(amount=0), Reason.BAD_AMOUNT),
        (GOOD._replace(ts=MIN_TS_US - 1), Reason.BAD_TIMESTAMP),
        (GOOD._replace(ts=NOW + MAX_FUTURE_US + 1), Reason.BAD_TIMESTAMP),
        (GOOD._replace(ts=1.7e15), Reason.BAD_TIMESTAMP),
        (GOOD._replace(trade_id=""), Reason.BAD_TRADE_ID),
        (GOOD._replace(trade_id="7" * 129), Reason.BAD_TRADE_ID),
        (GOOD._replace(trade_id="a b"), Reason.BAD_TRADE_ID),
        (GOOD._replace(trade_id="é"), Reason.BAD_TRADE_ID),
        (GOOD._replace(side="long"), Reason.BAD_SIDE),
    ],
)
def test_each_bad_trade_gets_its_code(trade: Trade, code: Reason) -> None:
    problem = trade_problem(trade, NOW)
    assert problem is not None and reason_code(problem) is code
    assert len(problem) < 200  # a huge value makes a short reason
    checked = split_trades(TradeBatch("binance", "BTC/USDT", 0, [GOOD, *[trade] * 9]), NOW)
    assert checked.value.trades == [GOOD] and [reason_code(r) for r, _ in checked.rejected] == [code] * 9


@pytest.mark.parametrize("symbol", ["BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC-240628-60000-C", "BTCUSD_PERP", "BTC-PERPETUAL", "1000SHIB/USDT", "币安人生/USDT"])
def test_real_symbols_pass(symbol: str) -> None:
    assert symbol_problem(symbol) is None


@pytest.mark.parametrize("symbol", ["", "S" * 100_000, "S" * 65, "BTC USDT", "BTC,USDT", "BTC\nUSDT", "XRP/\x00USDT", "/USDT", "_X", 42])
def test_malformed_symbols_are_refused(symbol: object) -> None:
    problem = symbol_problem(symbol)
    assert problem is not None and problem.startswith("bad_symbol: ") and len(problem) < 250


def test_whole_batch_test_agrees_with_the_trade_by_trade_checks() -> None:
    """The fast whole-batch test may only say "all fine" when every trade is: random batches
    mixing good trades and every kind of bad one."""
    rng = random.Random(5)
    bad_values = {"price": [math.nan, math.inf, -1.0, 0.0, 2e15], "amount": [math.nan, -math.inf, 0.0], "ts": [0, NOW * 2], "trade_id": ["", "x" * 200, "a b", "\x00"], "side": ["long", ""]}
    for _ in range(300):
        trades = []
        for i in range(rng.choice([1, 8, 9, 50, 500])):
            t = GOOD._replace(trade_id=str(i), ts=GOOD.ts + i)
            if rng.random() < 0.02:
                name = rng.choice(list(bad_values))
                t = t._replace(**{name: rng.choice(bad_values[name])})
            trades.append(t)
        checked = check_trade_batch(TradeBatch("binance", "BTC/USDT", 0, trades), "binance:BTC/USDT", NOW)
        want_good = [t for t in trades if trade_problem(t, NOW) is None]
        assert (checked.value.trades if checked.value is not None else []) == want_good
        assert len(checked.rejected) == len(trades) - len(want_good)


def test_a_record_with_bad_names_or_another_key_is_refused_whole() -> None:
    batch = TradeBatch("binance", "BTC/USDT", 0, [GOOD])
    assert check_trade_batch(batch, "binance:BTC/USDT", NOW).value is batch
    for bad, key in ((TradeBatch("Binance Exchange", "BTC/USDT", 0, [GOOD]), None), (TradeBatch("binance", "S" * 100_000, 0, [GOOD]), None), (batch, "binance:ETH/USDT")):
        checked = check_trade_batch(bad, key, NOW)
        assert checked.value is None and reason_code(checked.problem) in (Reason.BAD_EXCHANGE, Reason.BAD_SYMBOL, Reason.KEY_MISMATCH)


@pytest.mark.integration
def test_a_binary_file_stops_the_run_with_one_line_naming_it(topics: Settings, tmp_path: Path) -> None:
    binary = tmp_path / "trades.csv.gz"
    binary.write_bytes(random.Random(1).randbytes(50_000))
    env = env_for(topics, data_dir=tmp_path / "data", database=None) | {"COLUMNS": "500"}  # the error box unwrapped
    run = tickflow("run", "--source", f"replay:{binary}", "--until-drained", "--quiet", env=env)
    assert run.returncode == 2
    assert f"{binary}: a binary file, not a trade file" in run.stderr
    assert "Traceback" not in run.stderr


def run_stream(settings: Settings, stream: Stream, work: Path) -> dict[str, bytes]:
    """``tickflow run`` of the stream's replay file, with its direct records already in ``ticks``,
    into fresh stores; then ordered dumps of the derived tables."""
    work.mkdir(parents=True)
    produce_raw(settings, stream.records)
    path = write_file(stream, work / "trades.csv")
    database = fresh_database()
    try:
        env = env_for(settings, data_dir=work / "data", database=database)
        run = tickflow("run", "--source", f"replay:{path}", "--format", "tardis", "--until-drained", "--quiet", env=env, timeout=900 + len(stream.lines) / 500)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        dump = dump_with(env, work / "dump")
        return {name: t.path.read_bytes() for name, t in dump.tables.items() if name.split(".", 1)[1] in ("candles", "technical_metrics")}
    finally:
        drop_database(database)


def check_hostile_run(topics: Settings, tmp_path: Path, good: int, bad: int) -> None:
    h = build(good, bad)
    clean_settings = isolated(topics, uuid.uuid4().hex[:8])
    ensure_topics(clean_settings)
    with ThreadPoolExecutor(2) as pool:  # two pipelines side by side: each role mostly waits for the one before it
        hostile_run = pool.submit(run_stream, topics, h.hostile, tmp_path / "hostile")
        clean_run = pool.submit(run_stream, clean_settings, h.clean, tmp_path / "clean")
        hostile, clean = hostile_run.result(), clean_run.result()

    assert sorted(hostile) == sorted(clean)
    for name in clean:
        assert clean[name].count(b"\n") > 60, f"{name} has almost no rows"
        assert hostile[name] == clean[name], f"{name}: the hostile run's table differs from the clean run's"

    codec = AvroCodec("tickflow.DeadLetter")
    letters = [DeadLetter.from_avro(codec.decode(m.value())) for m in read_topic(topics, topics.kafka.topic_dlq)]
    by_component: dict[str, Counter[Reason | None]] = {}
    seen = set()
    for letter in letters:
        # Consumers are at-least-once: a record read again after a rebalance (seen under heavy load)
        # is dead-lettered again, under the same source coordinates, which tell the copies apart.
        coordinates = (letter.component, letter.source_partition, letter.source_offset, letter.reason, letter.payload)
        if letter.source_offset is not None and coordinates in seen:
            continue
        seen.add(coordinates)
        by_component.setdefault(letter.component, Counter())[reason_code(letter.reason)] += 1
    assert by_component.pop("ingest") == Counter(h.ingest_codes)
    # Every consumer of ticks refuses what another producer wrote there: the worker and both stores.
    assert by_component == dict.fromkeys(("candles", "sink-clickhouse", "sink-postgres"), Counter(h.record_codes))
    undecodable = [letter.payload for letter in letters if letter.component == "candles" and reason_code(letter.reason) is Reason.UNDECODABLE]
    assert sorted(undecodable) == sorted(h.record_payloads)

    late_codec = AvroCodec("tickflow.LateTrade")
    late = [LateTrade.from_avro(late_codec.decode(m.value())) for m in read_topic(topics, topics.kafka.topic_late_trades)]
    assert len(late) == h.late and all(t.trade.trade_id.startswith("late") for t in late)
    assert read_topic(clean_settings, clean_settings.kafka.topic_dlq) == [] and read_topic(clean_settings, clean_settings.kafka.topic_late_trades) == []


@pytest.mark.integration
def test_hostile_records_are_set_aside_and_the_good_ones_give_the_clean_run_tables(topics: Settings, tmp_path: Path) -> None:
    check_hostile_run(topics, tmp_path, good=1800, bad=150)
