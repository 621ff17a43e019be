"""Store outages: a sink whose store goes away keeps retrying with backoff, says so in its log and
metrics, never exits and never skips a record; the gateway's rooms come back with Redis.

Each test stops a PRIVATE server (``tests.chaos.stores``), never the machine's shared ones.
Short by default (an outage of ``TICKFLOW_CHAOS_OUTAGE_S``, 2 s); ``make chaos`` sets 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import orjson
import psycopg
import pytest
import redis
from prometheus_client import REGISTRY

from schemas.models import DeadLetter
from schemas.registry import RECORDS
from sinks.migrations import migrate_postgres
from sinks.postgres import PostgresSink
from sinks.redis import RedisSink
from sinks.runner import SinkRunner, StoppedWaiting, open_sinks
from streams.gateway.protocol import frame_payload, parse_command
from streams.gateway.rooms import channel_templates
from streams.gateway.ws import Client, Hub
from streams.settings import Settings
from tests.chaos.stores import PrivatePostgres, PrivateRedis
from tests.test_sink_runner import CANDLE, T0, candle, produce, sample, settings_for

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("TICKFLOW_CHAOS_OUTAGE_S", "2"))


def metric(name: str, sink: str) -> float:
    return REGISTRY.get_sample_value(name, {"sink": sink}) or 0.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    r = PrivateRedis().start()
    try:
        yield r
    finally:
        r.stop()


class Running:
    """A SinkRunner in a thread, as ``tickflow sink`` runs it."""

    def __init__(self, runner: SinkRunner) -> None:
        self.runner = runner
        self.stop = threading.Event()
        self.thread = threading.Thread(target=runner.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.runner.close()


def pg_counts(url: str) -> tuple[int, int]:
    with psycopg.connect(url, connect_timeout=2) as conn:
        trades = conn.execute("SELECT count(*) FROM trades WHERE exchange = 'binance'").fetchone()[0]
        candles = conn.execute("SELECT count(*) FROM candles WHERE exchange = 'binance'").fetchone()[0]
    return trades, candles


def test_postgres_outage_sink_retries_reports_and_catches_up(topics: Settings, postgres: PrivatePostgres, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(topics).updated(database_url=postgres.url, sink_retry_max_s=0.5)
    migrate_postgres(postgres.url)
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, candles")
    items, n_trades, n_candles = sample(settings)
    half = len(items) // 2
    sink = PostgresSink(postgres.url, connect_timeout=1)
    running = Running(SinkRunner(sink, settings, dead_letter=_no_letters, backoff_initial_s=0.05))
    try:
        produce(settings, items[:half])
        wait_for(lambda: sum(pg_counts(postgres.url)) > 0, "first rows written")
        retries = metric("tickflow_sink_retries_total", "postgres")
        postgres.stop()
        produce(settings, items[half:])  # arrives while the store is down
        time.sleep(OUTAGE_S)
        assert metric("tickflow_sink_store_up", "postgres") == 0
        assert metric("tickflow_sink_retries_total", "postgres") > retries
        assert running.thread.is_alive()
        down_since = metric("tickflow_sink_last_write_timestamp_seconds", "postgres")
        assert time.time() - down_since >= OUTAGE_S * 0.9  # the age of the last write shows the outage
        postgres.start()
        wait_for(lambda: pg_counts(postgres.url) == (n_trades, n_candles), "every row after the store came back")
        assert metric("tickflow_sink_store_up", "postgres") == 1
        wait_for(lambda: running.runner.lag() == 0, "lag caught up")
    finally:
        running.close()
        sink.close()
    logs = capsys.readouterr()
    text = logs.out + logs.err
    assert "sink write failed; retrying" in text and "store reachable again; catching up" in text


def test_sink_started_during_postgres_outage_waits_for_it(topics: Settings, postgres: PrivatePostgres) -> None:
    settings = topics.updated(database_url=postgres.url, redis_url=None, sink_retry_max_s=0.5)
    postgres.stop()
    stop = threading.Event()
    opened: list[object] = []
    t = threading.Thread(target=lambda: opened.extend(open_sinks(settings, only="postgres", stop=stop)), daemon=True)
    try:
        t.start()
        time.sleep(1.5)
        assert t.is_alive() and not opened  # waiting, not exited
        assert metric("tickflow_sink_store_up", "postgres") == 0
    finally:
        postgres.start()
    t.join(30)
    assert len(opened) == 1 and metric("tickflow_sink_store_up", "postgres") == 1
    opened[0].close()  # type: ignore[attr-defined]
    postgres.stop()
    with pytest.raises(StoppedWaiting):  # a stop request ends the wait
        stop.set()
        open_sinks(settings, only="postgres", stop=stop)
    postgres.start()


def test_redis_outage_sink_and_gateway_rooms_come_back(topics: Settings, redis_server: PrivateRedis) -> None:
    """Redis restarted empty: the sink writes the batch it was retrying once Redis is back, the
    gateway's hub subscribes its rooms again and forwards what is published from then on (pub/sub
    keeps nothing for a subscriber that was away: messages of the outage reach no room)."""
    settings = settings_for(topics).updated(redis_url=redis_server.url, sink_retry_max_s=0.5, redis_sink_batch_ms=5)
    received: list[dict] = []
    channel = "candles:binance:BTCUSDT:1m"

    def candles(minutes: range) -> list[tuple[str, bytes, bytes]]:
        return [(settings.kafka.topic_candles, b"binance:BTCUSDT:1m", CANDLE.encode(candle("BTCUSDT", m).to_avro())) for m in minutes]

    async def scenario() -> None:
        hub = Hub(redis_server.url, channel_templates(RECORDS.values()))
        await hub.start()
        client = Client(SimpleNamespace(scope={}), 10_000)  # type: ignore[arg-type]  # no server connection: frames wait in the queue
        await hub._subscribe(client, parse_command(orjson.dumps({"op": "subscribe", "room": "candles:BTCUSDT:1m"})))  # noqa: SLF001
        sink = RedisSink(redis_server.url)
        running = Running(SinkRunner(sink, settings, dead_letter=_no_letters, backoff_initial_s=0.05))
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, produce, settings, candles(range(2)))
            await _collect(client, received, {0, 1})
            redis_server.stop()
            await loop.run_in_executor(None, produce, settings, candles(range(2, 4)))
            await asyncio.sleep(OUTAGE_S)
            assert metric("tickflow_sink_store_up", "redis") == 0 and running.thread.is_alive()
            redis_server.start()
            await loop.run_in_executor(None, wait_for, lambda: metric("tickflow_sink_store_up", "redis") == 1, "the sink's retried batch written")
            r = redis.Redis.from_url(redis_server.url)
            probe = candle("BTCUSDT", 100)
            while not any(m["data"]["open_time"] == probe.open_time for m in received):  # the hub is back when a publish reaches the room
                r.publish(channel, orjson.dumps(probe))
                await _collect(client, received, {100}, timeout=0.5, strict=False)
            await loop.run_in_executor(None, produce, settings, candles(range(4, 6)))
            await _collect(client, received, {4, 5})
            await loop.run_in_executor(None, wait_for, lambda: running.runner.lag() == 0, "lag caught up")
            snapshot = orjson.loads(r.get(f"latest:{channel}"))
            assert snapshot["open_time"] == probe.open_time or snapshot["open_time"] == T0 + 5 * 60_000
        finally:
            await loop.run_in_executor(None, running.close)
            sink.close()
            await hub.close()

    asyncio.run(scenario())


async def _collect(client: Client, out: list[dict], minutes: set[int], timeout: float = 30.0, *, strict: bool = True) -> None:
    """Read the room's frames into ``out`` until the candles of ``minutes`` are among them."""
    want = {T0 + m * 60_000 for m in minutes}
    deadline = time.monotonic() + timeout
    while not want <= {m["data"]["open_time"] for m in out}:
        left = deadline - time.monotonic()
        if left <= 0:
            assert not strict, f"candles of minutes {sorted(minutes)} through the gateway's room within {timeout}s; got {len(out)} messages"
            return
        if not client.queue:
            client.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(client.wake.wait(), min(left, 0.5))
            continue
        frame = orjson.loads(frame_payload(client.queue.popleft()))
        if frame.get("type") == "message":
            out.append(frame)


def _no_letters(letter: DeadLetter) -> None:
    raise AssertionError(f"nothing is dead-lettered in an outage: {letter.reason}")


# -- the roles side by side (make chaos): a store down mid-replay, tables equal to a clean run's

FULL = "TICKFLOW_CHAOS_TRADES" in os.environ  # make chaos; in make test the focused tests above cover the product's side


@pytest.mark.chaos
@pytest.mark.skipif(not FULL, reason="roles side by side with a clean run to compare: make chaos (TICKFLOW_CHAOS_TRADES)")
@pytest.mark.parametrize("store", ["postgres", "redis", "clickhouse"])
def test_store_down_mid_replay_tables_equal_a_clean_run(store: str, postgres: PrivatePostgres, redis_server: PrivateRedis, tmp_path) -> None:  # noqa: ANN001
    from tests.chaos import harness

    replay = harness.replay_file()
    clean = harness.clean_dump(replay, tmp_path / "clean")
    database = f"chaos_{store}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {database}")
    started = time.monotonic()
    with harness.Roles(tmp_path / "run", postgres.url.rsplit("/", 1)[0] + f"/{database}", REDIS_URL=redis_server.url) as roles:
        roles.start_all(replay)
        sink = f"sink-{store}"
        roles.wait_for(f"the {store} sink writing", lambda: f'tickflow_sink_last_write_timestamp_seconds{{sink="{store}"}}' in roles.metrics(sink))
        try:
            if store == "postgres":
                postgres.stop()
            elif store == "redis":
                redis_server.stop()
            else:
                roles.kill(sink)  # the owner of the embedded ClickHouse store
                during = roles.tickflow("sql", "SELECT count() FROM trades")  # nobody owns the store: the query opens it
                assert during.returncode == 0, during.stderr
            if store != "clickhouse":  # the first failed write can take the client's connect timeout
                roles.wait_for(f"the {store} sink to report its store down", lambda: f'tickflow_sink_store_up{{sink="{store}"}} 0.0' in roles.metrics(sink), 60)
            time.sleep(OUTAGE_S)
        finally:
            if store == "postgres":
                postgres.start()
            elif store == "redis":
                redis_server.start()
            else:
                roles.start(sink)
        roles.wait_settled()
        assert all(roles.alive(name) for name in ("broker", "worker", *roles.sinks())), "every role survived the outage"
        after = roles.tickflow("sql", "SELECT count() FROM trades")  # through the restarted owner
        assert after.returncode == 0, after.stderr
        if store != "clickhouse":
            assert "store reachable again; catching up" in roles.log(sink, tail=10**7)
        dump = roles.dump(tmp_path / "dump")
    diff = harness.differences(clean, dump)
    harness.record(f"store down: {store}", harness.CHAOS_TRADES, 0, dump, "equal" if not diff else "DIFFERENT", time.monotonic() - started)
    assert not diff, "\n".join(diff)


def test_broker_identity_tells_a_lost_log_from_a_reconnect() -> None:
    """A durable broker keeps its cluster id across restarts: nothing to redo. The embedded one
    takes a new id at each start, which every role reads as "the log is gone"."""
    from streams.broker import BrokerIdentity

    identity = BrokerIdentity(object(), "test")
    before = REGISTRY.get_sample_value("tickflow_broker_log_lost_total", {"component": "test"}) or 0
    assert identity.seen("a") is None and identity.seen(None) is None and identity.seen("a") is None
    assert identity.seen("b") == ("a", "b")
    assert REGISTRY.get_sample_value("tickflow_broker_log_lost_total", {"component": "test"}) == before + 1


REPLAY_S = 30.0  # how long the broker-restart scenario's replay lasts: the broker restarts while ingest is sending


@pytest.mark.chaos
@pytest.mark.skipif(not FULL, reason="roles side by side with a clean run to compare: make chaos (TICKFLOW_CHAOS_TRADES)")
def test_broker_restart_roles_reconnect_and_the_replay_resumes_to_the_clean_tables(tmp_path) -> None:  # noqa: ANN001
    """``tickflow broker`` restarted mid-replay (its log was in memory): no role exits, each says
    what was lost, ingest sends its replay file again from the start by itself, and the stores end
    equal to a clean run's."""
    from tests.chaos import harness

    replay = harness.replay_file()
    speed = f"{max(replay.trades * harness.MEAN_GAP_US / 1e6 / REPLAY_S, 1.0):.0f}x"  # event time over wall time
    clean = harness.clean_dump(replay, tmp_path / "clean", speed=speed)
    started = time.monotonic()
    with harness.fresh_database() as database, harness.Roles(tmp_path / "run", database, REDIS_URL="") as roles:
        roles.start_all(replay, ingest_args=("--speed", speed))
        roles.wait_for("the ClickHouse sink writing", lambda: 'tickflow_sink_last_write_timestamp_seconds{sink="clickhouse"}' in roles.metrics("sink-clickhouse"))
        assert roles.alive("ingest"), "ingest still sending when the broker stops"
        roles.stop("broker")
        time.sleep(OUTAGE_S)
        roles.start("broker")
        lost = "broker restarted without its log"
        roles.wait_for("every role to see the lost log", lambda: all(lost in roles.log(n, tail=10**7) for n in ("ingest", "worker", *roles.sinks())), timeout=60)
        roles.wait_settled()
        assert "sending the source again from its start" in roles.log("ingest", tail=10**7)
        assert all(roles.alive(name) for name in ("broker", "worker", *roles.sinks()))
        assert "tickflow_broker_log_lost_total" in roles.metrics("worker")
        dump = roles.dump(tmp_path / "dump")
    diff = harness.differences(clean, dump)
    harness.record("broker restart", harness.CHAOS_TRADES, 0, dump, "equal" if not diff else "DIFFERENT", time.monotonic() - started)
    assert not diff, "\n".join(diff)


def test_broker_restart_mid_replay_ingest_sends_the_file_again_and_the_new_log_holds_it_once(topics: Settings, tmp_path) -> None:  # noqa: ANN001
    """The embedded broker restarted while ingest replays a file: the records queued for the lost
    log are discarded (an idempotent producer could never deliver them: the new broker does not
    know its producer id), none of them reaches the new log, and ingest sends the file again from
    its start, so the new log holds every trade once, in file order per symbol."""
    import asyncio

    from schemas.codec import AvroCodec
    from streams.broker import EmbeddedBroker, free_port
    from streams.ingest import run_ingest
    from streams.producer import RecordProducer
    from streams.sources.replay import ReplaySource
    from streams.topics import ensure_topics
    from tests.chaos import harness
    from tests.kafka_util import read_topic

    replay = harness.write_replay(tmp_path / "trades.csv", 2000, symbols=("BTCUSDT", "ETHUSDT"))
    broker = EmbeddedBroker(free_port()).start()
    settings = topics.updated(kafka_bootstrap=broker.bootstrap)
    ensure_topics(settings)
    producer = RecordProducer(settings, component="test-ingest")
    discarded = REGISTRY.get_sample_value("tickflow_producer_records_discarded_total", {"component": "test-ingest"}) or 0.0
    source = ReplaySource(replay.path, speed=replay.trades * harness.MEAN_GAP_US / 1e6 / 1.5)  # about 1.5 s

    async def scenario() -> None:
        ingest = asyncio.create_task(run_ingest(source, producer, settings))
        await asyncio.sleep(0.6)
        assert not ingest.done()
        broker.stop(grace_s=0)  # blocks the loop: ingest waits, its queue keeps what it sent
        await asyncio.sleep(0.3)  # records queue meanwhile
        await asyncio.get_running_loop().run_in_executor(None, broker.start)
        ensure_topics(settings)
        stats = await asyncio.wait_for(ingest, 60)
        assert stats.trades == replay.trades  # the last pass: the whole file

    try:
        asyncio.run(scenario())
        producer.close()
        codec = AvroCodec("tickflow.TradeBatch")
        ids: dict[str, list[int]] = {}
        for msg in read_topic(settings, settings.kafka.topic_ticks):
            batch = codec.decode(msg.value())
            ids.setdefault(batch["symbol"], []).extend(int(t["trade_id"]) for t in batch["trades"])
    finally:
        broker.stop(grace_s=0)
    assert producer.generation == 1
    assert (REGISTRY.get_sample_value("tickflow_producer_records_discarded_total", {"component": "test-ingest"}) or 0.0) > discarded
    assert sum(len(v) for v in ids.values()) == replay.trades, "every trade once in the new log"
    for symbol, seen in ids.items():
        assert seen == sorted(seen), f"{symbol}: file order"
