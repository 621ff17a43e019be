"""On-chain sources: recorded RPC replay, the live bitcoind source against a local fake node (resume,
reorg, auth), and the Coin Metrics file through ingest and the on-chain agent on a broker."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path

import pytest

from agents.onchain import OnchainMetrics
from schemas.codec import AvroCodec
from schemas.models import DeadLetter, OnchainBlock, OnchainBlockMetric, OnchainMetric, day_ms
from streams.ingest import run_ingest
from streams.producer import RecordProducer
from streams.settings import Settings
from streams.sources.base import BadInput, Record
from streams.sources.bitcoind import BitcoindSource
from streams.sources.bitcoind_replay import BitcoindReplaySource
from streams.sources.coinmetrics import CoinMetricsSource
from streams.statefile import read_state
from tests.conftest import data_path
from tests.fake_bitcoind import FakeBitcoind
from tests.kafka_util import read_topic


def collect(source, *, deliver: bool = True) -> list[Record | BadInput]:  # noqa: ANN001
    async def run() -> list[Record | BadInput]:
        out = []
        try:
            async for item in source.stream():
                out.append(item)
                if deliver and isinstance(item, Record) and item.on_delivered:
                    item.on_delivered()
        finally:
            await source.aclose()
        return out

    return asyncio.run(run())


def test_replay_of_recorded_responses_glob_and_folder() -> None:
    folder = data_path("bitcoin_onchain_sample")
    items = collect(BitcoindReplaySource(f"{folder}/*rpc_response*.json"))
    blocks = [i.value for i in items if isinstance(i, Record)]
    assert [b.height for b in blocks] == [0, 1, 50000, 50001, 50002]  # each hash once, in height order
    b50001 = blocks[3]
    assert all(i.value is not None for t in b50001.txs for i in t.inputs)  # resolved from the recorded getrawtransaction
    bad = [i for i in items if isinstance(i, BadInput)]
    assert len(bad) == 1 and "nTx is 3 but 0 transactions" in bad[0].reason  # the height-500000 response
    # A folder: bitcoin-etl's expected files are not RPC responses, each dead-lettered with the reason
    items = collect(BitcoindReplaySource(folder))
    reasons = [i.reason for i in items if isinstance(i, BadInput)]
    assert sum("not JSON" in r for r in reasons) >= 4 and sum("not a recorded bitcoind RPC response" in r for r in reasons) >= 4
    assert len([i for i in items if isinstance(i, Record)]) == 5
    with pytest.raises(FileNotFoundError):
        BitcoindReplaySource(folder / "nothing-*.json")


def test_replay_of_one_bare_or_envelope_file(tmp_path: Path) -> None:
    folder = data_path("bitcoin_onchain_sample")
    block = json.loads(next(folder.glob("bitcoin_block_1_rpc_response_getblock_*")).read_text())
    (tmp_path / "bare.json").write_text(json.dumps(block))
    (tmp_path / "env.json").write_text(json.dumps({"result": block, "error": None, "id": 1}))
    (tmp_path / "err.json").write_text(json.dumps({"result": None, "error": {"code": -5, "message": "Block not found"}, "id": 2}))
    for name in ("bare.json", "env.json"):
        (item,) = collect(BitcoindReplaySource(tmp_path / name))
        assert item.value.height == 1 and item.value.txs[0].coinbase
    (item,) = collect(BitcoindReplaySource(tmp_path / "err.json"))
    assert isinstance(item, BadInput) and "Block not found" in item.reason


def live(fake: FakeBitcoind, state: Path, **kw) -> BitcoindSource:  # noqa: ANN003
    return BitcoindSource(fake.url, state_dir=state, start_height=50000, follow=False, user="rpc", password="secret", **kw)


def test_live_source_follows_resumes_and_handles_a_reorg(tmp_path: Path) -> None:
    with FakeBitcoind(data_path("bitcoin_onchain_sample")) as fake:
        first = [i.value for i in collect(live(fake, tmp_path))]
        assert [b.height for b in first] == [50000, 50001, 50002]
        assert all(i.value is not None for t in first[1].txs for i in t.inputs)  # getblock 2 + getrawtransaction
        assert fake.calls.count("getrawtransaction") == 3 and "getblock" in fake.calls
        # A restart resumes after the last delivered block: nothing new
        assert collect(live(fake, tmp_path)) == []
        # A block the broker has not acknowledged is read again after a restart
        fake.extend("a")
        assert [i.value.height for i in collect(live(fake, tmp_path), deliver=False)] == [50003]
        tip_a = [i.value for i in collect(live(fake, tmp_path))]
        assert [(b.height, b.hash) for b in tip_a] == [(50003, "a" * 64)]
        # A reorg: 50002 and 50003 replaced by a competing branch; the source walks back to the fork
        fake.tip = 50002
        replaced = fake.fork(50002, "b")
        fake.extend("c")
        fork = [i.value for i in collect(live(fake, tmp_path))]
        assert [(b.height, b.hash) for b in fork] == [(50002, "b" * 64), (50003, "c" * 64)]
        saved = dict(read_state(tmp_path / "bitcoind-btc.json")["heights"])
        assert saved[50002] == "b" * 64 and saved[50003] == "c" * 64 and saved[50001] == first[1].hash
        # The metrics retract the replaced block and revise the day
        m = OnchainMetrics()
        rows = [r for b in [*first, *tip_a, *fork] for r in m.add_block(b)]
        day = [r for r in rows if isinstance(r, OnchainMetric) and r.day == day_ms(date(2010, 4, 10))]
        retracted = [(r.height, r.hash, r.revision) for r in rows if isinstance(r, OnchainBlockMetric) and r.retracted]
        assert retracted == [(50002, first[2].hash, 1), (50003, "a" * 64, 1)]
        assert [r.revision for r in day] == list(range(len(day))) and day[-1].last_height == 50003
        assert day[-1].tx_count == 1 + 3 + 1 + 1 and day[-1].block_count == 4  # 50003 a retracted, b and c in
        assert m.chains["btc"].hashes[50002] == replaced["hash"] and m.chains["btc"].hashes[50003] == "c" * 64


def test_live_source_auth_and_cookie(tmp_path: Path) -> None:
    with FakeBitcoind(data_path("bitcoin_onchain_sample"), user="__cookie__", password="abc") as fake:
        cookie = tmp_path / ".cookie"
        cookie.write_text("__cookie__:abc")
        src = BitcoindSource(fake.url, state_dir=tmp_path, start_height=50002, follow=False, cookie_file=cookie)
        assert [i.value.height for i in collect(src)] == [50002]
        fake.warming_up = 3  # a node still loading its index is asked again
        src = BitcoindSource(fake.url, state_dir=tmp_path / "w", start_height=50001, follow=False, cookie_file=cookie)
        assert [i.value.height for i in collect(src)] == [50001, 50002]
        bad = BitcoindSource(fake.url, state_dir=tmp_path / "b", start_height=50002, follow=False, user="x", password="y", rpc_attempts=2)
        with pytest.raises(RuntimeError, match="refused the credentials"):
            collect(bad)


@pytest.mark.integration
def test_coinmetrics_and_blocks_through_ingest_and_the_onchain_agent(topics: Settings, tmp_path: Path) -> None:
    """The sources on a broker, the agent run on what they wrote: every BTC day once, revisions for
    the days of the blocks, bad rows in the dead-letter topic."""
    from agents.onchain_agent import OnchainLogic
    from agents.spec import Inbound
    from schemas.registry import record_type

    csv = tmp_path / "btc.csv"
    lines = data_path("coinmetrics_onchain", "btc.csv").read_text().splitlines()
    csv.write_text("\n".join([*lines[:500], lines[500].replace(",", ",x", 1), *lines[501:]]) + "\n")

    async def ingest() -> None:
        producer = RecordProducer(topics)
        await run_ingest(CoinMetricsSource(csv), producer, topics, source_name="coinmetrics")
        await run_ingest(BitcoindReplaySource(f"{data_path('bitcoin_onchain_sample')}/*rpc_response*.json"), producer, topics, source_name="replay")
        producer.close()

    asyncio.run(ingest())
    days = read_topic(topics, topics.kafka.topic_onchain_days)
    blocks = read_topic(topics, topics.kafka.topic_onchain_blocks)
    assert len(days) == len(lines) - 2 and len(blocks) == 5
    assert {m.key() for m in days} == {b"btc"}
    dlq = [DeadLetter.from_avro(AvroCodec("tickflow.DeadLetter").decode(m.value())) for m in read_topic(topics, topics.kafka.topic_dlq)]
    assert any("not a number" in d.reason for d in dlq) and any("nTx" in d.reason for d in dlq)
    # One partition holds the asset's rows and blocks (both keyed btc), as the runtime hands them over
    assert {m.partition() for m in days} == {m.partition() for m in blocks}
    inbound = []
    for name, msgs in (("onchain_day", days), ("onchain_block", blocks)):
        rt, codec = record_type(name), AvroCodec(record_type(name).schema)
        inbound += [Inbound(name, "btc", rt.model.from_avro(codec.decode(m.value())), m.offset()) for m in msgs]
    out = list(OnchainLogic(labels={}, keep_days=2).on_batch(inbound))
    days_out = [o.value for o in out if o.record == "onchain_metric"]
    assert len({(o.day, o.source) for o in days_out if o.source == "coinmetrics"}) == len(lines) - 2
    assert [o.value.height for o in out if o.record == "onchain_block_metric"] == [0, 1, 50000, 50001, 50002]
    assert isinstance(out[-1].value, OnchainMetric) and isinstance(inbound[-1].value, OnchainBlock)


def test_getblock_verbosity_3_gives_the_blocks_of_verbosity_2_and_getrawtransaction(tmp_path: Path) -> None:
    """A node with ``getblock <hash> 3`` (prevouts in the block, Core 25+) is read without a
    getrawtransaction; a node without it is asked once, then read at verbosity 2. Both give the
    same blocks (values, addresses, creation times), whose rows equal bitcoin-etl's; a recording of
    the verbosity-3 session replays to the same blocks too."""
    from agents.onchain import block_stats
    from tests.test_onchain import etl

    folder = data_path("bitcoin_onchain_sample")
    with FakeBitcoind(folder, verbosity3=True) as v3, FakeBitcoind(folder) as v2:
        blocks3 = [i.value for i in collect(live(v3, tmp_path / "v3"))]
        blocks2 = [i.value for i in collect(live(v2, tmp_path / "v2"))]
        recorded = [v3._with_prevouts(v3.blocks[v3.by_height[h]]) for h in (50000, 50001, 50002)]
        headers = list(v3.headers.values())
    assert [b.height for b in blocks3] == [50000, 50001, 50002] and blocks3 == blocks2
    assert "getrawtransaction" not in v3.calls and set(v3.verbosities) == {3}
    assert v2.verbosities[0] == 3 and set(v2.verbosities[1:]) == {2} and v2.calls.count("getrawtransaction") == 3
    spent = [i for t in blocks3[1].txs + blocks3[2].txs for i in t.inputs]
    assert len(spent) == 3 and all(i.value == 5_000_000_000 and i.address and i.created_time for i in spent)
    assert sorted(i.created_time for i in spent) == sorted(r["blocktime"] for r in v3.raw.values())
    _, exp_txs = etl("bitcoin_stream_50001_50002")
    for b in blocks3[1:]:
        txs = [t for t in exp_txs if t["block_number"] == b.height]
        s = block_stats(b)
        assert s.fees_sat == sum(t["fee"] for t in txs) and s.resolved
        assert s.addresses == {a for t in txs for side in ("inputs", "outputs") for io in t[side] for a in io["addresses"]}
    # The same session recorded (getblock 3 results and the headers it asked for) and replayed
    for i, r in enumerate([*recorded, *headers]):
        (tmp_path / f"r{i}.json").write_text(json.dumps({"result": r, "error": None, "id": i}))
    assert [i.value for i in collect(BitcoindReplaySource(tmp_path / "r*.json"))] == blocks3
