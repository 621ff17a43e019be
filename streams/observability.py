"""Structured JSON logs (structlog) and the Prometheus /metrics endpoint, shared by every command."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas.validation import reason_code

TRADES_IN = Counter("tickflow_trades_in_total", "Trades accepted from sources", ["source"])
BATCHES_OUT = Counter("tickflow_batches_produced_total", "TradeBatch records produced", ["topic"])
RECORDS_IN = Counter("tickflow_source_records_total", "Records other than trades (on-chain rows, blocks, news items, Fear & Greed days) accepted from sources", ["source", "record"])
PRODUCER_DISCARDED = Counter(
    "tickflow_producer_records_discarded_total",
    "Records a producer had not delivered when the broker restarted without its log: discarded (they were bound for the lost log)",
    ["component"],
)
BROKER_LOST_LOG = Counter(
    "tickflow_broker_log_lost_total",
    "Times a component found the broker restarted without its log (a new cluster id: the embedded broker keeps memory only); "
    "it then reads its inputs again from the new log's start",
    ["component"],
)
BYTES_OUT = Counter("tickflow_bytes_produced_total", "Bytes produced", ["topic"])
DLQ_RECORDS = Counter(
    "tickflow_dlq_records_total", "Records sent to the dead-letter topic, by component and reason class (dead_letter_class)", ["component", "reason"]
)
SYMBOL_LAST_RECEIPT = Gauge(
    "tickflow_symbol_last_receipt_timestamp_seconds",
    "Wall clock (Unix seconds) when ingest last received a trade of the symbol: a silent feed stops moving it",
    ["exchange", "symbol"],
)
# Fine below and around the 100 ms SLA, coarse above: replays and finalization delays land high.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
E2E_LATENCY = Histogram(
    "tickflow_e2e_latency_seconds",
    "From an origin time (exchange, receipt, produced) to the record being durable in a store or published on Redis (sinks.telemetry)",
    ["store", "record", "origin"],
    buckets=LATENCY_BUCKETS,
)
PRODUCE_LATENCY = Histogram(
    "tickflow_produce_latency_seconds",
    "Time from produce() to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


# Dead-letter reasons start with a machine-readable code (schemas.validation.Reason), which is the
# metric's label. Reasons of free text (components that write no code yet) get one of these classes,
# so the label's cardinality stays bounded; first match wins.
DEAD_LETTER_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("store_rejected", re.compile(r"^rejected by ")),
    ("agent_error", re.compile(r"failed on this record")),
    ("undecodable", re.compile(r"undecodable|not valid avro|decode|unknown schema|magic byte|schema id", re.I)),
    ("too_late", re.compile(r"too old|too late|\blate\b|older than|history", re.I)),
    ("unparseable", re.compile(r"line \d+|not valid json|expected a json|header lacks|item \d+:", re.I)),
    ("invalid_value", re.compile(r"\bbad |price|amount|timestamp|trade id|\bside\b|\bnan\b|infinite|negative|out of range|outside|not final|missing", re.I)),
)
DEAD_LETTER_OTHER = "other"


# Kafka header on a derived record: the ingest receipt (µs, decimal) of the newest trade behind it,
# set by the agent runtime, so that sinks can time receipt-to-store for candles and indicators too.
RECEIVED_HEADER = "tickflow-received-us"


def received_header(headers: list[tuple[str, bytes | None]] | None) -> int | None:
    """The receipt time a producer put on a record, or None (absent or malformed)."""
    for key, value in headers or ():
        if key == RECEIVED_HEADER and value:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def dead_letter_class(reason: str) -> str:
    """The ``reason`` label of a dead letter: its code, else the class of its free text (pure)."""
    code = reason_code(reason)
    if code is not None:
        return code.value
    for name, pattern in DEAD_LETTER_CLASSES:
        if pattern.search(reason):
            return name
    return DEAD_LETTER_OTHER


def parse_memory_limit(cgroup_v2: str | None, cgroup_v1: str | None, meminfo: str | None) -> float | None:
    """The memory limit that applies to this process, in bytes (pure): the cgroup v2 ``memory.max``,
    else the cgroup v1 limit, else the machine's RAM (``MemTotal``); "max" and v1's huge
    "unlimited" value count as no cgroup limit."""
    for text in (cgroup_v2, cgroup_v1):
        value = (text or "").strip()
        if value.isdigit() and int(value) < 2**60:
            return float(value)
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo or "", re.M)
    return float(m.group(1)) * 1024 if m else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


class MemoryLimitCollector(Collector):
    """``tickflow_memory_limit_bytes``: what ``process_resident_memory_bytes`` is compared with
    by the memory alert; read at each scrape, as a container's limit can change."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        limit = parse_memory_limit(
            _read("/sys/fs/cgroup/memory.max"), _read("/sys/fs/cgroup/memory/memory.limit_in_bytes"), _read("/proc/meminfo")
        )
        if limit is not None:
            yield GaugeMetricFamily("tickflow_memory_limit_bytes", "Memory limit of this process: cgroup limit, else the machine's RAM", value=limit)


REGISTRY.register(MemoryLimitCollector())


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """tickflow's own logs through structlog; the libraries' standard-library logs rendered by the same processors, so every line on stderr is one JSON object."""
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


# Default /metrics port of each role (infra/prometheus/prometheus.yml scrapes these). ``tickflow
# run`` serves the worker's on METRICS_PORT and each sink process's at the same offset from it.
ROLE_METRICS_PORTS: dict[str, int] = {
    "worker": 9108,
    "ingest": 9109,
    "sink-clickhouse": 9110,
    "sink-postgres": 9111,
    "sink-redis": 9112,
    "broker": 9113,
}


def role_port_offset(role: str) -> int:
    """How far ``role``'s default port is from the worker's (METRICS_PORT under ``tickflow run``)."""
    return ROLE_METRICS_PORTS[role] - ROLE_METRICS_PORTS["worker"]


def metrics_port(role: str, configured: int | None) -> int:
    """The port ``role`` serves /metrics on: ``configured`` (``--metrics-port`` or ``METRICS_PORT``,
    0 = off) or the role's default."""
    return ROLE_METRICS_PORTS[role] if configured is None else configured


class MetricsPortInUse(RuntimeError):
    """The metrics port is taken, most often by the same role already running."""


_metrics_started: set[int] = set()


def serve_metrics(port: int, *, role: str = "this command") -> str | None:
    """Serve /metrics once per process and return its URL; port 0 turns it off (None).

    Raises :class:`MetricsPortInUse`, naming the settings to change, when the port is taken.
    """
    if not port:
        return None
    if port not in _metrics_started:
        try:
            start_http_server(port, addr="0.0.0.0")
        except OSError as exc:
            raise MetricsPortInUse(
                f"metrics port {port} of {role} is in use ({exc.strerror}): set --metrics-port or METRICS_PORT to a free port, or 0 to turn metrics off"
            ) from None
        _metrics_started.add(port)
    return f"http://127.0.0.1:{port}/metrics"
