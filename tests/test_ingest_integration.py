"""Ingest on a real Kafka protocol peer (embedded Tansu): real trades in, every trade once, in order."""

from __future__ import annotations

import math

import orjson
import pytest

from schemas.codec import AvroCodec
from schemas.models import DeadLetter, Trade, TradeBatch
from streams.ingest import run_ingest
from streams.producer import RecordProducer
from streams.observability import dead_letter_class
from streams.sources.base import BadInput, Source
from streams.sources.replay import ReplaySource
from tests.conftest import data_path
from tests.kafka_util import read_topic

pytestmark = pytest.mark.integration

TARDIS = ("tardis_binance_futures_btcusdt", "tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv")


async def test_tardis_replay_lands_in_ticks_once_and_in_order(topics) -> None:
    path = data_path(*TARDIS)
    stats = await run_ingest(ReplaySource(path), RecordProducer(topics), topics)
    assert stats.trades == 9999 and stats.rejected == 0

    codec = AvroCodec("tickflow.TradeBatch")
    records = read_topic(topics, topics.kafka.topic_ticks)
    assert records, "nothing in ticks"
    partitions = {m.partition() for m in records}
    assert len(partitions) == 1, "all trades of a symbol must land in one partition"
    assert {m.key() for m in records} == {b"binance-futures:BTCUSDT"}
    trades = [Trade._make(t) for m in records for t in TradeBatch.from_avro(codec.decode(m.value())).trades]
    ids = [int(t.trade_id) for t in trades]
    assert len(ids) == 9999 and len(set(ids)) == 9999
    assert ids == list(range(ids[0], ids[0] + 9999)), "trades out of order or missing"
    first = trades[0]
    assert first == Trade("42377944", 1582329602111000, 9682.0, 0.132, "buy")


class MixedSource(Source):
    """10,000 malformed inputs of every kind interleaved with good trades."""

    def __init__(self) -> None:
        self.good = 0

    async def stream(self):
        t0 = 1_700_000_000_000_000
        bad_trades = [
            Trade("b", t0, math.nan, 1.0, "buy"),
            Trade("b", t0, -1.0, 1.0, "buy"),
            Trade("b", t0, 10.0, 0.0, "sell"),
            Trade("b", t0, 10.0, math.inf, "sell"),
            Trade("b", 5, 10.0, 1.0, "sell"),  # 1970
            Trade("b", t0 * 10, 10.0, 1.0, "sell"),  # far future
            Trade("", t0, 10.0, 1.0, "sell"),
        ]
        n_bad = 0
        i = 0
        while n_bad < 10_000:
            i += 1
            good = Trade(str(i), t0 + i, 100.0 + i % 7, 0.5, "buy")
            if i % 3 == 0:
                n_bad += 1
                yield BadInput(f"unparsable line {i}", f"garbage,{i},??".encode())
                continue
            bad = bad_trades[i % len(bad_trades)]._replace(trade_id=f"bad{i}")
            if not bad.trade_id or i % len(bad_trades) == 6:
                bad = bad._replace(trade_id="")
            n_bad += 1
            self.good += 1
            yield TradeBatch("test", "BAD/USDT", t0, [good, bad])


async def test_malformed_inputs_all_dead_lettered_while_good_trades_flow(topics) -> None:
    source = MixedSource()
    stats = await run_ingest(source, RecordProducer(topics), topics)
    assert stats.rejected == 10_000
    assert stats.trades == source.good

    dlq_codec = AvroCodec("tickflow.DeadLetter")
    letters = [DeadLetter.from_avro(dlq_codec.decode(m.value())) for m in read_topic(topics, topics.kafka.topic_dlq)]
    assert len(letters) == 10_000
    assert all(letter.reason and letter.payload for letter in letters)
    assert {dead_letter_class(letter.reason) for letter in letters} == {"bad_price", "bad_amount", "bad_timestamp", "bad_trade_id", "unparseable"}
    unparsable = [letter for letter in letters if letter.reason.startswith("unparsable")]
    assert unparsable[0].payload.startswith(b"garbage,")
    rejected_trade = next(letter for letter in letters if letter.reason.startswith("bad_price: "))
    assert orjson.loads(rejected_trade.payload)["symbol"] == "BAD/USDT"

    codec = AvroCodec("tickflow.TradeBatch")
    good = [t for m in read_topic(topics, topics.kafka.topic_ticks) for t in map(Trade._make, TradeBatch.from_avro(codec.decode(m.value())).trades)]
    assert len(good) == source.good
    assert all(t.price > 0 and t.trade_id.isdigit() for t in good)
