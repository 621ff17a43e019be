"""The dashboard in headless Chromium (Debian's, driven by playwright): candles drawn, live updates, bad keys."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest
import redis

from sinks.base import SinkBatch
from sinks.postgres import PostgresSink
from sinks.redis import candle_json
from streams.gateway.auth import KeyStore
from streams.settings import Settings
from tests.gateway_util import REDIS_URL, candles, indicators_of, pg_database, running_gateway

pytestmark = pytest.mark.timeout(180)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make services installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, str, list]]:
    exchange, symbol = f"dash{uuid.uuid4().hex[:4]}", f"D{uuid.uuid4().hex[:5].upper()}USDT"
    with pg_database() as url:
        cs = candles(exchange, symbol, 30)
        sink = PostgresSink(url)
        sink.write(SinkBatch(candle=cs, indicators=indicators_of(cs)))
        sink.close()
        key = KeyStore(url).create("dash", ("read", "stream"))
        settings = Settings(database_url=url, redis_url=REDIS_URL, metrics_port=0, gateway_pipeline_metrics="http://127.0.0.1:1/metrics")
        with running_gateway(settings) as base:
            yield f"http://{base}/?exchange={exchange}&symbol={symbol}&interval=1m", key, cs


def test_chart_draws_candles_and_a_live_update_moves_the_last_one(browser, site) -> None:  # noqa: ANN001
    url, key, cs = site
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_function("window.tickflowDashboard.candles.data().length === 30", timeout=20_000)
    assert page.locator("#chart canvas").count() > 0
    last = page.evaluate("window.tickflowDashboard.candles.data().at(-1)")
    assert last == {"time": cs[-1].open_time // 1000, "open": cs[-1].open, "high": cs[-1].high, "low": cs[-1].low, "close": cs[-1].close}
    assert page.evaluate("window.tickflowDashboard.lines.ma50.data().length") == 30
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=10_000)
    page.wait_for_function("Object.values(window.tickflowDashboard.state.rooms).every(r => r.epoch)", timeout=10_000)
    # the last window, in progress with a new close: the chart's last bar follows it
    moved = cs[-1]
    moved.close, moved.high, moved.is_final, moved.revision = 555.5, 555.5, False, 0
    redis.Redis.from_url(REDIS_URL).publish(f"candles:{moved.exchange}:{moved.symbol}:1m", candle_json(moved))
    page.wait_for_function("window.tickflowDashboard.candles.data().at(-1).close === 555.5", timeout=10_000)
    assert page.evaluate("window.tickflowDashboard.candles.data().length") == 30
    assert "555.5" in page.inner_text("#legend")
    assert errors == []
    page.close()


def test_a_bad_key_shows_a_clear_message(browser, site) -> None:  # noqa: ANN001
    url, _, _ = site
    page = browser.new_context().new_page()
    page.goto(url)
    page.fill("#key", "tf_000000000000_wrongwrongwrongwrongwrong")
    page.click("button[type=submit]")
    page.wait_for_selector("#status:not([hidden])", timeout=10_000)
    text = page.inner_text("#status")
    assert "API key rejected" in text and "wrong, malformed or revoked" in text
    page.close()
