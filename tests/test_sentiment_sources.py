"""Sentiment sources against the shared files and local HTTP servers serving recorded answers."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from agents.sentiment_model import default_scorer
from streams.sources.base import BadInput, Record
from streams.sources.feargreed import FearGreedApiSource, FearGreedFileSource, classify
from streams.sources.news import NewsSource, parse_time_ms
from streams.sources.rss import RssSource
from streams.sources.social import SocialSource
from tests.conftest import data_path

FIXTURES = Path(__file__).parent / "fixtures" / "rss"
DAY = 86_400_000


async def collect(source):
    try:
        return [x async for x in source.stream()]
    finally:
        await source.aclose()


def split(items):
    return [x.value for x in items if isinstance(x, Record)], [x for x in items if isinstance(x, BadInput)]


def test_parse_time_forms():
    assert parse_time_ms("2022-04-01 07:00:00+00:00") == 1648796400000
    assert parse_time_ms("5-7-2022 04:24") == 1656995040000  # day-month-year, the NYU file's
    assert parse_time_ms("Tue Jun 07 15:05:34 +0000 2022") == 1654614334000
    assert parse_time_ms("1517463000") == 1517463000000
    with pytest.raises(ValueError):
        parse_time_ms("yesterday")


def test_news_files_sorted_scored_and_bad_rows_dead_lettered():
    scorer = default_scorer()
    good, bad = split(asyncio.run(collect(NewsSource(data_path("crypto_news", "crypto_news_finbert_ds4a.csv"), scorer))))
    assert len(good) == 2636 and not bad
    assert [g.ts for g in good] == sorted(g.ts for g in good)
    assert all(-1 <= g.score <= 1 and g.label in ("positive", "negative", "neutral") for g in good)
    assert sum("BTC" in g.assets.split(";") for g in good) > 500
    good, bad = split(asyncio.run(collect(NewsSource(data_path("crypto_news", "cryptonews_semicolon_nyu_team4.csv"), scorer))))
    assert len(good) + len(bad) == 7524 and bad and all("no title" in b.reason for b in bad)
    assert good[0].text  # the ;-separated file's text column came through


def test_news_jsonl_and_bad_lines(tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_text('{"published": "2024-03-01T10:00:00Z", "title": "Bitcoin ETF inflows hit record", "url": "u1"}\nnot json\n{"title": "no time"}\n')
    good, bad = split(asyncio.run(collect(NewsSource(p, default_scorer()))))
    assert [g.item_id for g in good] == ["u1"] and good[0].assets == "BTC"
    assert sorted(b.reason.split(": ", 1)[1][:8] for b in bad) == ["bad JSON", "no time"]


def test_social_engagement():
    good, bad = split(asyncio.run(collect(SocialSource(data_path("crypto_news", "2k_tweets_btc_ds4a.csv"), default_scorer()))))
    assert len(good) == 2000 and not bad
    assert all(g.source == "social" and g.engagement is not None for g in good)


def test_feargreed_files_normalised_to_utc_days_with_gaps():
    a = FearGreedFileSource(data_path("fear_greed", "fear_greed_index_namanjain723.csv"))
    good_a, bad_a = split(asyncio.run(collect(a)))
    assert not bad_a and all(g.day % DAY == 0 for g in good_a)
    assert a.gaps and all(m >= 1 for _, m in a.gaps)
    b = FearGreedFileSource(data_path("fear_greed", "fear_greed_index_scofieldchen.csv"))
    good_b, _ = split(asyncio.run(collect(b)))
    by_day = {g.day: g.value for g in good_b}
    common = [g for g in good_a if g.day in by_day]
    assert len(common) > 2000 and all(by_day[g.day] == g.value for g in common)  # the two copies agree day by day


def test_feargreed_bad_rows(tmp_path):
    p = tmp_path / "fg.csv"
    p.write_text("date,value,classification\n2024-01-01,40,Fear\n2024-01-01,41,Fear\n2024-01-02,140,Greed\n2024-01-04,80,Extreme Greed\n")
    src = FearGreedFileSource(p)
    good, bad = split(asyncio.run(collect(src)))
    assert [g.value for g in good] == [40, 80] and len(bad) == 2
    assert src.gaps == [(parse_time_ms("2024-01-02"), 2)]
    assert classify(10) == "Extreme Fear" and classify(50) == "Neutral" and classify(90) == "Extreme Greed"


class Recorded(BaseHTTPRequestHandler):
    """Serves ``self.server.bodies`` in turn, honouring If-None-Match like a real feed host."""

    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.requests.append(dict(self.headers))
        srv.paths.append(self.path)
        body, etag = srv.bodies[min(srv.calls, len(srv.bodies) - 1)]
        srv.calls += 1
        if etag and self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        if etag:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", "Tue, 07 Jun 2022 16:00:00 GMT")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorded)
    srv.bodies, srv.calls, srv.requests, srv.paths = [], 0, [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_rss_conditional_polls_and_dedup_across_restarts(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/feed"
    state = tmp_path / "rss.json"
    feed1 = (FIXTURES / "feed1.xml").read_bytes()
    server.bodies = [(feed1, '"v1"'), (feed1, '"v1"')]
    good, bad = split(asyncio.run(collect(RssSource(url, default_scorer(), state, poll_s=0, max_polls=2))))
    assert [g.item_id for g in good] == ["b", "a"]  # oldest first
    assert good[1].assets == "BTC" and good[0].assets == "SOL"
    assert len(bad) == 1 and "no title" in bad[0].reason
    assert server.requests[1].get("If-None-Match") == '"v1"'  # second poll was conditional: 304
    # A restart with a new feed version (Atom): only the new entry comes out.
    server.bodies = [((FIXTURES / "feed2.xml").read_bytes(), '"v2"')]
    server.calls = 0
    good, _ = split(asyncio.run(collect(RssSource(url, default_scorer(), state, poll_s=0, max_polls=1))))
    assert [g.item_id for g in good] == ["d"] and good[0].assets == "ETH"
    assert server.requests[-1].get("If-None-Match") == '"v1"' and server.requests[-1].get("If-Modified-Since")


def test_feargreed_api(server):
    url = f"http://127.0.0.1:{server.server_address[1]}/fng/"
    data = {"name": "Fear and Greed Index", "data": [
        {"value": "40", "value_classification": "Fear", "timestamp": "1704153600"},
        {"value": "55", "value_classification": "Greed", "timestamp": "1704067200"},
        {"value": "x", "value_classification": "Fear", "timestamp": "1703894400"},
        {"value": "20", "value_classification": "Extreme Fear", "timestamp": "1703808000"},
    ]}
    server.bodies = [(orjson.dumps(data), None), (orjson.dumps({"data": data["data"][:1]}), None)]
    src = FearGreedApiSource(url, poll_s=0, max_polls=2)
    good, bad = split(asyncio.run(collect(src)))
    assert [g.value for g in good] == [20, 55, 40] and len(bad) == 1  # the second poll's day was known
    assert src.gaps == [(1703894400000, 2)]
    assert "limit=0" in server.paths[0] and "limit=2" in server.paths[1]  # whole history, then the newest days
