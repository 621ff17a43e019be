"""Structured JSON logs (structlog) and the Prometheus /metrics endpoint, shared by every command."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Histogram, start_http_server

TRADES_IN = Counter("tickflow_trades_in_total", "Trades accepted from sources", ["source"])
BATCHES_OUT = Counter("tickflow_batches_produced_total", "TradeBatch records produced", ["topic"])
BYTES_OUT = Counter("tickflow_bytes_produced_total", "Bytes produced", ["topic"])
DLQ_RECORDS = Counter("tickflow_dlq_records_total", "Records sent to the dead-letter topic", ["component"])
PRODUCE_LATENCY = Histogram(
    "tickflow_produce_latency_seconds",
    "Time from produce() to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """tickflow's own logs through structlog; the libraries' standard-library logs (Faust, mode,
    aiokafka) rendered by the same processors, so every line on stderr is one JSON object."""
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


# Default /metrics port of each role, so they run side by side on one machine with their defaults.
# ``tickflow run`` serves the worker's on METRICS_PORT and each sink process's at the same offset from it.
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
