"""Sentiment end to end: `tickflow ingest` of Fear & Greed, then `tickflow run --source news:...`
until drained; the `sentiment` topic's newest version of each window equals the pure logic's, and
`tickflow sql` reads the same rows from ClickHouse."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agents.sentiment_agent import SentimentLogic
from agents.sentiment_model import default_scorer
from agents.spec import Emit, Inbound
from schemas.codec import codec_for
from schemas.models import SentimentAggregate
from streams.settings import Settings
from streams.sources.base import Record
from streams.sources.feargreed import FearGreedFileSource
from streams.sources.news import NewsSource
from tests.conftest import data_path
from tests.kafka_util import read_topic
from tests.test_candles_e2e import env_for, tickflow

pytestmark = pytest.mark.integration


def newest(aggs: list[SentimentAggregate]) -> dict[tuple[str, str, int], SentimentAggregate]:
    out: dict[tuple[str, str, int], SentimentAggregate] = {}
    for a in aggs:
        k = (a.asset, a.interval, a.window_start)
        if k not in out or a.revision > out[k].revision:
            out[k] = a
    return out


async def _records(source) -> list[Record]:
    return [x async for x in source.stream() if isinstance(x, Record)]


def test_news_run_until_drained_gives_the_logics_windows_with_fear_greed(topics: Settings, tmp_path: Path) -> None:
    news = data_path("crypto_news", "crypto_news_finbert_ds4a.csv")
    fg = data_path("fear_greed", "fear_greed_index_scofieldchen.csv")
    env = env_for(topics, data_dir=tmp_path / "data", database=None)
    ing = tickflow("ingest", "--source", f"feargreed:{fg}", env=env)
    assert ing.returncode == 0, ing.stderr[-3000:]
    run = tickflow("run", "--source", f"news:{news}", "--until-drained", "--quiet", env=env)
    assert run.returncode == 0, run.stderr[-3000:]

    codec = codec_for("tickflow.SentimentAggregate", topics.kafka.topic_sentiment, None)
    got = newest([SentimentAggregate.from_avro(codec.decode(m.value())) for m in read_topic(topics, topics.kafka.topic_sentiment)])

    # The reference: the pure logic over the same Fear & Greed days, then the same items.
    logic = SentimentLogic(topics.agents.sentiment_lateness_ms, topics.agents.sentiment_grace_ms)
    days = asyncio.run(_records(FearGreedFileSource(fg)))
    items = asyncio.run(_records(NewsSource(news, default_scorer())))
    inbound = [Inbound(r.record, r.key, r.value, i) for i, r in enumerate([*days, *items])]
    outs = [*logic.on_batch(inbound), *logic.on_timer(0.0, float("inf"))]
    want = newest([o.value for o in outs if isinstance(o, Emit)])

    assert set(got) == set(want)
    strip = lambda a: (a.items, a.mean_score, a.positive_share, a.negative_share, a.neutral_share, a.fear_greed_value, a.fear_greed_class)  # noqa: E731
    assert {k: strip(v) for k, v in got.items()} == {k: strip(v) for k, v in want.items()}
    # Every article once: the file lists 60 of its 2,636 rows again under another keyword (same url).
    assert sum(a.items for (asset, interval, _), a in got.items() if asset == "MARKET" and interval == "1d") == len({i.value.item_id for i in items}) == 2576
    assert all(a.fear_greed_value is not None for (_, interval, _), a in got.items() if interval == "1d")

    # The ClickHouse sink stored the same newest versions (ReplacingMergeTree(revision), FINAL).
    out = tickflow("sql", "SELECT asset, interval, toUnixTimestamp64Milli(window_start) AS start, items, mean_score, fear_greed_value, revision "
                   "FROM sentiment_aggregates FINAL", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    stored = {(r["asset"], r["interval"], int(r["start"])): (int(r["items"]), float(r["mean_score"]), r["fear_greed_value"], int(r["revision"]))
              for r in map(json.loads, filter(None, out.stdout.splitlines()))}
    assert stored == {k: (v.items, v.mean_score, v.fear_greed_value, v.revision) for k, v in got.items()}


def test_ingest_sends_bad_news_rows_to_the_dead_letter_topic_with_the_reason(topics: Settings, tmp_path: Path) -> None:
    from schemas.models import DeadLetter, NewsScored

    nyu = data_path("crypto_news", "cryptonews_semicolon_nyu_team4.csv")
    env = env_for(topics, data_dir=tmp_path / "data", database=None)
    ing = tickflow("ingest", "--source", f"news:{nyu}", env=env)
    assert ing.returncode == 0, ing.stderr[-3000:]
    dlq = codec_for("tickflow.DeadLetter", topics.kafka.topic_dlq, None)
    letters = [DeadLetter.from_avro(dlq.decode(m.value())) for m in read_topic(topics, topics.kafka.topic_dlq)]
    assert len(letters) == 28 and all(d.component == "ingest" and d.reason.endswith("no title") and d.payload for d in letters)
    news = codec_for("tickflow.NewsScored", topics.kafka.topic_news, None)
    items = [NewsScored.from_avro(news.decode(m.value())) for m in read_topic(topics, topics.kafka.topic_news)]
    assert len(items) == 7524 - 28 and [i.ts for i in items] == sorted(i.ts for i in items)
