"""``make soak``: every role side by side under a paced synthetic load for a bounded time.

The roles run as users run them, each its own ``tickflow`` command and process: ``broker`` (embedded
Tansu), ``worker``, ``sink clickhouse``, ``sink postgres``, ``sink redis``, ``serve`` (the gateway)
and ``ingest --source synthetic --rate R``, on a fresh broker, data dir and PostgreSQL database.
Measured while it runs (after a warm-up that covers start-up and the consumer-group joins):

- trade receipt -> a Redis subscriber seeing the in-progress 1m candle that includes the trade.
  Receipt is ``TradeBatch.received_at``, the ingest wall clock stamped when the batch is received
  (for the synthetic source, when its micro-batcher closes the batch, as an exchange message would
  arrive), which travels with the record in ``ticks``. A probe reads ``ticks`` (no consumer group)
  for each batch's (symbol, last trade id, received_at, trades) and a subscriber process matches
  each batch with the first 1m update whose ``last_trade_id`` reaches the batch's last trade
  (synthetic ids rise per symbol); samples are weighted by the batch's trades.
- trade receipt -> durable row in ClickHouse and in PostgreSQL: the sinks' own
  ``tickflow_e2e_latency_seconds{record="trade",origin="receipt"}`` histogram, observed right after
  each write returned, read from their /metrics; quantiles are interpolated within its buckets.
- consumer lag of every consumer group (committed offset vs end of log, read with an admin client),
  RSS and CPU of every process (from /proc), at every sample.

Writes ``soak.json``, ``soak.md`` (the tables) and ``soak.png`` (latency, lag and RSS over time)
to the output folder, with each role's log under ``logs/``. Nothing is asserted: the report says
which targets were met (p99 to Redis <= 50 ms, lag bounded, RSS growth <= 5%).

Run: ``.venv/bin/python -m benchmarks.soak [--seconds 600] [--rate 20000] [--out data/soak]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.common import fresh_pg_database, quiet_logs, tag
from streams.broker import die_with_parent, free_port, port_open
from streams.settings import Settings, StoreSettings

SINKS = ("clickhouse", "postgres", "redis")
STORES = ("clickhouse", "postgres")  # the durable ones, timed to a row
REDIS_P99_TARGET_MS = 50.0
RSS_GROWTH_TARGET = 0.05
DEFAULT_PG = StoreSettings.model_fields["database_url"].default
DEFAULT_REDIS = StoreSettings.model_fields["redis_url"].default
E2E = "tickflow_e2e_latency_seconds"


@dataclass(frozen=True)
class Plan:
    seconds: float = 600.0  # of load, after the warm-up
    rate: float = 20_000.0  # trades/s asked of the synthetic source
    symbols: int = 100
    sample_s: float = 5.0
    warmup_s: float = 60.0  # load before measuring starts: group joins, caches, the first minute's windows and trade ids
    out: Path = Path("data/soak")


# ------------------------------------------------------------------ pure helpers


def weighted_quantile(values: Any, weights: Any, q: float) -> float:
    """The smallest value at or above which a share ``q`` of the weight lies below or at (NaN if empty)."""
    import numpy as np

    if len(values) == 0:
        return math.nan
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    return float(np.asarray(values)[order][min(int(np.searchsorted(cum, q * cum[-1])), len(cum) - 1)])


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus ``histogram_quantile``: cumulative (upper bound, count) pairs, linear within the bucket."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # above the last finite bound: that bound is all one can say
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def bucket_delta(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Cumulative buckets of the observations between two scrapes (same bounds)."""
    prev = dict(before)
    return [(le, count - prev.get(le, 0.0)) for le, count in after]


def growth(series: list[float]) -> float:
    """Relative RSS change from the first sample to the median of the last three."""
    if len(series) < 2 or series[0] <= 0:
        return math.nan
    tail = sorted(series[-3:])
    return tail[len(tail) // 2] / series[0] - 1.0


def lag_bounded(values: list[int]) -> bool:
    """Lag is bounded when its last third never exceeds the middle third's peak by more than half
    (plus a small slack for a batch in flight): a backlog that keeps growing fails this."""
    if len(values) < 3:
        return True
    third = len(values) // 3
    middle, last = values[third : 2 * third], values[2 * third :]
    return max(last) <= 1.5 * max(middle) + 1000


def histogram(text: str, name: str, **labels: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of histogram ``name`` in a /metrics page, summed over
    the series whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name != name.removesuffix("_seconds") and family.name != name:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket") and all(s.labels.get(k) == v for k, v in labels.items()):
                out[float(s.labels["le"])] += s.value
    return sorted(out.items())


# Where the time to Redis goes, from the worker's own histograms (the candle agent's share).
BREAKDOWN = {
    "receipt -> candle agent reads it (broker hop, queueing)": ("tickflow_agent_input_delay_seconds", {"agent": "candles"}),
    "candle agent, one partition's batch": ("tickflow_agent_batch_seconds", {"agent": "candles"}),
    "candle agent checkpoint round, snapshot to durable": ("tickflow_agent_checkpoint_seconds", {"agent": "candles"}),
    "receipt -> published on Redis (worker)": (E2E, {"store": "redis", "record": "candle_update", "origin": "receipt"}),
}


def scalar(text: str, name: str) -> float:
    """Sum of every sample of counter or gauge ``name`` in a /metrics page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------ processes


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in task.read_text().split()]
    return out


@dataclass
class Role:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None


class Roles:
    """The ``tickflow`` commands, each in its own process with its log in ``logs/``; the kernel
    ends them if the driver dies (PR_SET_PDEATHSIG)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.roles: dict[str, Role] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, role: Role) -> None:
        log = (self.logs / f"{role.name}.log").open("ab")
        role.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *role.args], stdout=log, stderr=log, env=self.env, preexec_fn=die_with_parent(signal.SIGTERM)  # noqa: PLW1509
        )
        self.roles[role.name] = role

    def check(self) -> None:
        for role in self.roles.values():
            if role.proc is not None and role.proc.poll() is not None:
                tail = (self.logs / f"{role.name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{role.name} exited with code {role.proc.returncode}:\n{tail}")

    def pids(self) -> dict[str, int]:
        """Every process by label: each role, and the broker's Tansu child."""
        out: dict[str, int] = {}
        for role in self.roles.values():
            if role.proc is None or role.proc.poll() is not None:
                continue
            out[role.name] = role.proc.pid
            for i, child in enumerate(children(role.proc.pid)):
                out[f"{role.name} (tansu)" if role.name == "broker" else f"{role.name} child {i}"] = child
        return out

    def stop(self, names: list[str], timeout: float = 30.0) -> None:
        procs = [self.roles[n].proc for n in names if n in self.roles and self.roles[n].proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def scrape(url: str | None) -> str:
    if not url:
        return ""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own loopback endpoints
            return resp.read().decode()
    except OSError:
        return ""


# ------------------------------------------------------------------ lag


def consumer_groups(settings: Settings) -> dict[str, Any]:
    """Every consumer group the roles run, with its lag reader: each enabled agent's and each sink's
    (Tansu lists no groups, so they are named from the registries, as the roles name them)."""
    from agents.registry import AGENTS
    from schemas.registry import topic_of
    from sinks.runner import GroupLag, sink_lag

    conf = {"bootstrap.servers": settings.kafka.bootstrap}
    groups: dict[str, Any] = {}
    for spec in AGENTS:
        if spec.enabled is None or spec.enabled(settings):
            groups[f"{settings.kafka.app_id}-{spec.name}"] = GroupLag(conf, f"{settings.kafka.app_id}-{spec.name}", [topic_of(settings, name) for name in spec.inputs])
    for name in SINKS:
        lag = sink_lag(settings, name)
        groups[lag.group_id] = lag
    return groups


def group_lags(groups: dict[str, Any]) -> dict[str, int]:
    """Records not yet committed, per consumer group (-1: the broker did not answer)."""
    out = {}
    for name, lag in groups.items():
        try:
            out[name] = lag.total()
        except Exception:  # noqa: BLE001 - a slow answer under load: a gap in the series, not a failed soak
            out[name] = -1
    return out


def wait_ready(url: dict[str, str], partitions: int, timeout: float, roles: Roles) -> None:
    """Until the worker's candle agent holds every ticks partition, every sink runs its loop (their
    /metrics show the agent's partition lag and the sink's lag) and the gateway answers /healthz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roles.check()
        worker = scrape(url["worker"]).count('tickflow_agent_lag{agent="candles"')
        sinks = all(f'tickflow_sink_lag{{sink="{s}"}}' in scrape(url[f"sink-{s}"]) for s in SINKS)
        if worker >= partitions and sinks and scrape(url["gateway"].removesuffix("metrics") + "healthz"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"the worker and the sinks were not ready within {timeout:.0f} s")


# ------------------------------------------------------------------ Redis probe


def read_ticks(bootstrap: str, topic: str, out: Connection, stop: threading.Event) -> None:
    """Each ``ticks`` record's (symbol, last trade id, received_at µs, trades), sent in chunks to the subscriber."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from schemas.codec import AvroCodec
    from schemas.models import TradeBatch

    codec = AvroCodec("tickflow.TradeBatch")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-probe-{tag()}", "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    try:
        while not stop.is_set():
            chunk = []
            for msg in consumer.consume(10_000, 0.1):
                if msg.error() is None:
                    b = TradeBatch.from_avro(codec.decode(msg.value()))
                    if b.trades:
                        chunk.append((b.symbol, int(b.trades[-1][0]), b.received_at, len(b.trades)))
            if chunk:
                out.send(chunk)
    finally:
        consumer.close()
        out.send(None)


def subscribe(url: str, pattern: str, batches: Connection, ready: Any, result: Connection, since_us: Any, window_s: float) -> None:
    """The Redis subscriber, in its own process: matches each batch with the first in-progress 1m
    update that includes it; at the end sends p50/p99 overall and per window of receipt time."""
    import orjson
    import redis

    pubsub = redis.Redis.from_url(url).pubsub()
    pubsub.psubscribe(pattern)
    while (pubsub.get_message(timeout=1.0) or {}).get("type") != "psubscribe":
        pass
    ready.set()
    pending: dict[str, deque[tuple[int, int, int]]] = defaultdict(deque)  # symbol -> (last id, received µs, trades)
    recent: dict[str, deque[tuple[float, int]]] = defaultdict(deque)  # symbol -> (arrival s, last_trade_id), newest last
    lat, wts, recv = array("d"), array("l"), array("d")

    def sample(arrival: float, received_us: int, n: int) -> None:
        if received_us >= since_us.value:
            lat.append(arrival - received_us / 1e6)
            wts.append(n)
            recv.append(received_us / 1e6)

    def take(chunk: list[tuple[str, int, int, int]]) -> None:
        for symbol, last_id, received_us, n in chunk:
            seen = recent.get(symbol)
            if seen and seen[-1][1] >= last_id and not pending[symbol]:
                arrival = next(a for a, lid in seen if lid >= last_id)  # already published before the probe read it
                sample(arrival, received_us, n)
            else:
                pending[symbol].append((last_id, received_us, n))

    done = False
    last_drain = 0.0
    while not done:
        msg = pubsub.get_message(timeout=0.01)
        if msg is not None and msg["type"] == "pmessage":
            arrival = time.time()
            doc = orjson.loads(msg["data"])
            if not doc["is_final"] and doc["last_trade_id"] is not None:
                symbol, last_id = doc["symbol"], int(doc["last_trade_id"])
                seen = recent[symbol]
                seen.append((arrival, last_id))
                while seen and seen[0][0] < arrival - 30:
                    seen.popleft()
                todo = pending.get(symbol)
                while todo and todo[0][0] <= last_id:
                    _, received_us, n = todo.popleft()
                    sample(arrival, received_us, n)
        if time.monotonic() - last_drain > 0.05:
            last_drain = time.monotonic()
            while batches.poll():
                chunk = batches.recv()
                if chunk is None:
                    done = True
                    break
                take(chunk)
    cutoff = time.time() - 5  # batches this fresh may simply not have had their update yet
    uncovered = sum(1 for todo in pending.values() for _, r, _ in todo if since_us.value <= r < cutoff * 1e6)
    result.send(_summarise(lat, wts, recv, window_s, uncovered))
    pubsub.close()


def _summarise(lat: array, wts: array, recv: array, window_s: float, uncovered: int) -> dict[str, Any]:
    import numpy as np

    values, weights, at = np.frombuffer(lat, dtype=np.float64), np.frombuffer(wts, dtype=np.int64), np.frombuffer(recv, dtype=np.float64)
    series = []
    if len(at):
        slot = np.floor(at / window_s)
        for s in np.unique(slot):
            mask = slot == s
            series.append((float(s * window_s), weighted_quantile(values[mask], weights[mask], 0.5) * 1000, weighted_quantile(values[mask], weights[mask], 0.99) * 1000))
    return {
        "p50_ms": weighted_quantile(values, weights, 0.5) * 1000,
        "p99_ms": weighted_quantile(values, weights, 0.99) * 1000,
        "max_ms": float(values.max() * 1000) if len(values) else math.nan,
        "batches": len(values),
        "trades": int(weights.sum()),
        "batches_without_update": uncovered,
        "series": series,  # (window start, unix s; p50 ms; p99 ms)
    }


# ------------------------------------------------------------------ the run


@dataclass
class Report:
    started: str
    plan: dict[str, Any]
    machine: dict[str, Any]
    achieved_rate: float
    latency_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    breakdown_ms: dict[str, dict[str, Any]] = field(default_factory=dict)  # the worker's histograms, interpolated
    lag: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)  # seconds from the driver's start: broker up, roles ready
    series: dict[str, Any] = field(default_factory=dict)


def run(plan: Plan) -> Report:
    quiet_logs()
    plan.out.mkdir(parents=True, exist_ok=True)
    exchange = f"soak{tag()}"
    with tempfile.TemporaryDirectory(prefix="tickflow-soak-") as tmp, fresh_pg_database(os.environ.get("DATABASE_URL") or DEFAULT_PG) as db:
        if db is None:
            raise RuntimeError("PostgreSQL is not reachable (DATABASE_URL): the soak runs every sink")
        return _run(plan, Path(tmp), db, exchange)


def _run(plan: Plan, data: Path, db: str, exchange: str) -> Report:
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    broker_port, gateway_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{broker_port}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "TICKFLOW_DATA_DIR": str(data),
        "DATABASE_URL": db,
        "REDIS_URL": redis_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
    }
    env.pop("METRICS_PORT", None)
    ports = {name: free_port() for name in ("broker", "worker", "ingest", *(f"sink-{s}" for s in SINKS))}
    url = {name: f"http://127.0.0.1:{p}/metrics" for name, p in ports.items()}
    url["gateway"] = f"http://127.0.0.1:{gateway_port}/metrics"
    roles = Roles(env, plan.out / "logs")
    settings = Settings(kafka_bootstrap=bootstrap, database_url=db, redis_url=redis_url)
    symbols = ",".join(f"SYN{i}/USDT" for i in range(plan.symbols))
    load_start = os.getloadavg()
    ctx = get_context("spawn")
    stop_reader = threading.Event()
    sub_proc = reader = None
    began = time.monotonic()
    startup: dict[str, float] = {}
    try:
        roles.start(Role("broker", ["broker", "--port", str(broker_port), "--metrics-port", str(ports["broker"])]))
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", broker_port) or "broker on" not in (plan.out / "logs" / "broker.log").read_text(errors="replace"):
            roles.check()
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not start within 60 s")
            time.sleep(0.2)
        startup["broker"] = time.monotonic() - began
        roles.start(Role("worker", ["worker", "--metrics-port", str(ports["worker"])]))
        for s in SINKS:
            roles.start(Role(f"sink-{s}", ["sink", s, "--metrics-port", str(ports[f"sink-{s}"])]))
        roles.start(Role("gateway", ["serve", "--host", "127.0.0.1", "--port", str(gateway_port)]))
        since_us = ctx.Value("q", 2**62)
        ready = ctx.Event()
        to_sub, from_reader = ctx.Pipe(duplex=False)
        result_in, result_out = ctx.Pipe(duplex=False)
        sub_proc = ctx.Process(target=subscribe, args=(redis_url, f"candles:{exchange}:*:1m", to_sub, ready, result_out, since_us, plan.sample_s), name="soak-subscriber")
        sub_proc.start()
        wait_ready(url, settings.kafka.ticks_partitions, 180, roles)
        startup["roles ready"] = time.monotonic() - began
        groups = consumer_groups(settings)
        if not ready.wait(30):
            raise RuntimeError("the Redis subscriber did not start")
        reader = threading.Thread(target=read_ticks, args=(bootstrap, settings.kafka.topic_ticks, from_reader, stop_reader), name="soak-ticks", daemon=True)
        reader.start()

        roles.start(
            Role("ingest", ["ingest", "--source", "synthetic", "--rate", f"{plan.rate:g}", "--symbols", symbols, "--exchange", exchange, "--metrics-port", str(ports["ingest"])])
        )
        t0 = time.time()
        measure_from = t0 + plan.warmup_s
        end = measure_from + plan.seconds
        samples: list[dict[str, Any]] = []
        first_measured = 0
        cpu_at: dict[str, float] = {}
        trades_at: dict[str, float] = {}
        while True:
            now = time.time()
            roles.check()
            pids = roles.pids()
            metrics = {name: scrape(url[name]) for name in ("worker", "ingest", *(f"sink-{s}" for s in STORES))}
            sample = {
                "t": now,
                "rss": {label: rss_bytes(pid) for label, pid in pids.items()},
                "cpu": {label: cpu_seconds(pid) for label, pid in pids.items()},
                "lag": group_lags(groups),
                "hist": {s: histogram(metrics.get(f"sink-{s}", ""), E2E, store=s, record="trade", origin="receipt") for s in STORES},
                "worker_hist": {k: histogram(metrics.get("worker", ""), name, **labels) for k, (name, labels) in BREAKDOWN.items()},
                "trades_in": scalar(metrics.get("ingest", ""), "tickflow_trades_in_total"),
            }
            samples.append(sample)
            if now >= measure_from and not cpu_at:
                since_us.value = int(now * 1e6)
                cpu_at, trades_at = dict(sample["cpu"]), {"t": now, "n": sample["trades_in"]}
                first_measured = len(samples) - 1
            if now >= end:
                break
            time.sleep(max(min(plan.sample_s, end - time.time()), 0.05) if now >= measure_from else max(min(plan.sample_s, measure_from - time.time()), 0.05))
        load_end = os.getloadavg()
        roles.stop(["ingest"])
        stop_reader.set()
        reader.join(30)
        if not result_in.poll(60):
            raise RuntimeError("the Redis subscriber sent no result")
        redis_result = result_in.recv()
        sub_proc.join(10)
        report = _report(plan, samples[first_measured:], cpu_at, trades_at, redis_result, load_start, load_end, t0)
        report.startup_s = startup
        return report
    finally:
        stop_reader.set()
        if sub_proc is not None and sub_proc.is_alive():
            sub_proc.kill()
        roles.stop(["ingest", "gateway", "worker", *(f"sink-{s}" for s in SINKS)])
        roles.stop(["broker"])


def _report(plan: Plan, samples: list[dict[str, Any]], cpu_at: dict[str, float], trades_at: dict[str, float], redis_result: dict[str, Any], load_start: Any, load_end: Any, t0: float) -> Report:
    first, last = samples[0], samples[-1]
    elapsed = last["t"] - first["t"]
    report = Report(
        started=datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds"),
        plan={**asdict(plan), "out": str(plan.out)},
        machine={"cores": os.cpu_count(), "load_average_start": list(load_start), "load_average_end": list(load_end)},
        achieved_rate=(last["trades_in"] - trades_at["n"]) / max(last["t"] - trades_at["t"], 1e-9),
    )
    redis_series = redis_result.pop("series")
    report.latency_ms["redis subscriber (in-progress 1m candle)"] = {**redis_result, "target_p99_ms": REDIS_P99_TARGET_MS}
    for what in BREAKDOWN:
        whole = bucket_delta(last["worker_hist"][what], first["worker_hist"][what])
        report.breakdown_ms[what] = {"p50_ms": bucket_quantile(whole, 0.5) * 1000, "p99_ms": bucket_quantile(whole, 0.99) * 1000, "count": whole[-1][1] if whole else 0}
    store_series: dict[str, list[tuple[float, float, float]]] = {}
    for store in STORES:
        whole = bucket_delta(last["hist"].get(store, []), first["hist"].get(store, []))
        finite = [le for le, _ in whole if math.isfinite(le)]
        report.latency_ms[f"{store} row (sink's histogram)"] = {
            "p50_ms": bucket_quantile(whole, 0.5) * 1000,
            "p99_ms": bucket_quantile(whole, 0.99) * 1000,
            "batches": whole[-1][1] if whole else 0,
            # A quantile in the +Inf bucket reads as the last finite bound: it is at least that.
            "p99_beyond_buckets": bool(finite) and bucket_quantile(whole, 0.99) >= finite[-1],
        }
        store_series[store] = [
            (b["t"], bucket_quantile(d, 0.5) * 1000, bucket_quantile(d, 0.99) * 1000)
            for a, b in zip(samples, samples[1:], strict=False)
            if (d := bucket_delta(b["hist"].get(store, []), a["hist"].get(store, [])))
        ]
    for group in sorted({g for s in samples for g in s["lag"]}):
        values = [v for s in samples if (v := s["lag"].get(group, -1)) >= 0]
        if not values:
            continue
        report.lag[group] = {"max": max(values), "end": values[-1], "median": sorted(values)[len(values) // 2], "bounded": lag_bounded(values)}
    for label in sorted({p for s in samples for p in s["rss"]}):
        values = [s["rss"][label] for s in samples if s["rss"].get(label)]
        if not values:
            continue
        cores = (last["cpu"].get(label, 0.0) - cpu_at.get(label, 0.0)) / max(elapsed, 1e-9)
        report.rss[label] = {"start_mb": values[0] / 1e6, "end_mb": values[-1] / 1e6, "max_mb": max(values) / 1e6, "growth": growth(values), "cores": cores}
    p99 = redis_result["p99_ms"]
    report.targets = {
        "redis_p99_le_50ms": bool(p99 <= REDIS_P99_TARGET_MS),
        "lag_bounded": all(v["bounded"] for v in report.lag.values()),
        # The embedded broker keeps every record in memory by design (README, Real services).
        "rss_growth_le_5pct": all(v["growth"] <= RSS_GROWTH_TARGET for k, v in report.rss.items() if "tansu" not in k),
        "rate_reached": report.achieved_rate >= 0.95 * plan.rate,
    }
    report.series = {
        "t": [s["t"] for s in samples],
        "rss_mb": {k: [s["rss"].get(k, 0) / 1e6 for s in samples] for k in report.rss},
        "lag": {g: [v if (v := s["lag"].get(g, -1)) >= 0 else None for s in samples] for g in report.lag},
        "redis_latency": redis_series,
        "store_latency": store_series,
    }
    return report


# ------------------------------------------------------------------ output


def write(report: Report, out: Path) -> list[Path]:
    paths = [out / "soak.json", out / "soak.md", out / "soak.png"]
    paths[0].write_text(json.dumps(asdict(report), indent=1, default=float, allow_nan=True))
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths


def _ms(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1f}" if v < 10 else f"{v:,.0f}"


def markdown(r: Report) -> str:
    p = r.plan
    lines = [
        f"# Soak {r.started}",
        "",
        f"{p['seconds']:.0f} s measured after {p['warmup_s']:.0f} s of warm-up; synthetic source asked {p['rate']:,.0f} trades/s over {p['symbols']} symbols, "
        f"achieved {r.achieved_rate:,.0f}; {r.machine['cores']} cores, load average {r.machine['load_average_start'][0]:.1f} at start, "
        f"{r.machine['load_average_end'][0]:.1f} at end. Every role its own process: broker, ingest, worker, sink clickhouse, sink postgres, sink redis, serve.",
        "",
        "| trade receipt to | p50 ms | p99 ms | samples (batches) | target |",
        "|---|---|---|---|---|",
    ]
    for path, v in r.latency_ms.items():
        target = f"p99 <= {v['target_p99_ms']:.0f} ms: {'met' if v['p99_ms'] <= v['target_p99_ms'] else 'not met'}" if "target_p99_ms" in v else ""
        p99 = ("≥ " if v.get("p99_beyond_buckets") else "") + _ms(v["p99_ms"])
        lines.append(f"| {path} | {_ms(v['p50_ms'])} | {p99} | {v['batches']:,.0f} | {target} |")
    lines += ["", "| where the time to Redis goes (worker's histograms, interpolated in buckets) | p50 ms | p99 ms | observations |", "|---|---|---|---|"]
    lines += [f"| {k} | {_ms(v['p50_ms'])} | {_ms(v['p99_ms'])} | {v['count']:,.0f} |" for k, v in r.breakdown_ms.items()]
    lines += ["", "| consumer group | lag median | lag max | lag at end | bounded |", "|---|---|---|---|---|"]
    lines += [f"| {g} | {v['median']:,} | {v['max']:,} | {v['end']:,} | {'yes' if v['bounded'] else 'NO'} |" for g, v in r.lag.items()]
    lines += ["", "| process | RSS start MB | RSS end MB | max MB | growth | cores used |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['start_mb']:,.0f} | {v['end_mb']:,.0f} | {v['max_mb']:,.0f} | {v['growth']:+.1%} | {v['cores']:.2f} |" for k, v in r.rss.items()]
    lines += ["", "Targets: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in r.targets.items()), ""]
    return "\n".join(lines)


def plot(r: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = r.series["t"][0]
    fig, (lat, lag, rss) = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    redis = r.series["redis_latency"]
    if redis:
        lat.plot([(t - t0) / 60 for t, _, _ in redis], [p99 for _, _, p99 in redis], label="Redis subscriber p99")
        lat.plot([(t - t0) / 60 for t, _, _ in redis], [p50 for _, p50, _ in redis], label="Redis subscriber p50", linestyle=":")
    for store, points in r.series["store_latency"].items():
        lat.plot([(t - t0) / 60 for t, _, _ in points], [p99 for _, _, p99 in points], label=f"{store} row p99")
    lat.axhline(REDIS_P99_TARGET_MS, color="grey", linestyle="--", linewidth=0.8, label="Redis p99 target")
    lat.set_yscale("log")
    lat.set_ylabel("trade receipt to ... (ms)")
    lat.legend(fontsize=8)
    for group, values in r.series["lag"].items():
        lag.plot([(t - t0) / 60 for t in r.series["t"]], values, label=group)
    lag.set_ylabel("consumer lag (records)")
    lag.legend(fontsize=7)
    for label, values in r.series["rss_mb"].items():
        rss.plot([(t - t0) / 60 for t in r.series["t"]], values, label=label)
    rss.set_yscale("log")
    rss.set_ylabel("RSS (MB)")
    rss.set_xlabel("minutes since measuring started")
    rss.legend(fontsize=7)
    fig.suptitle(f"tickflow soak {r.started}: {r.achieved_rate:,.0f} trades/s, {r.machine['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    env_seconds = os.environ.get("SOAK_SECONDS")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=float(env_seconds) if env_seconds else Plan.seconds, help="measured seconds of load (SOAK_SECONDS)")
    ap.add_argument("--rate", type=float, default=Plan.rate, help="synthetic trades/s")
    ap.add_argument("--symbols", type=int, default=Plan.symbols)
    ap.add_argument("--sample-s", type=float, default=Plan.sample_s, help="seconds between samples of lag, RSS and the histograms")
    ap.add_argument("--warmup-s", type=float, default=Plan.warmup_s)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default data/soak/<UTC time>)")
    args = ap.parse_args()
    out = args.out or Plan.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    plan = Plan(args.seconds, args.rate, args.symbols, args.sample_s, args.warmup_s, out)
    report = run(plan)
    for p in write(report, out):
        print(p)
    print(markdown(report))


if __name__ == "__main__":
    main()
