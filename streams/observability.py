"""Structured JSON logs (structlog) and the Prometheus /metrics endpoint, shared by every command."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Histogram, start_http_server

TRADES_IN = Counter("tickflow_trades_in_total", "Trades accepted from sources", ["source"])
BATCHES_OUT = Counter("tickflow_batches_produced_total", "TradeBatch records produced", ["topic"])
BYTES_OUT = Counter("tickflow_bytes_produced_total", "Bytes produced", ["topic"])
RECORDS_IN = Counter("tickflow_records_in_total", "Records other than trades accepted from sources (news, Fear & Greed)", ["source", "record"])
DLQ_RECORDS = Counter("tickflow_dlq_records_total", "Records sent to the dead-letter topic", ["component"])
PRODUCE_LATENCY = Histogram(
    "tickflow_produce_latency_seconds",
    "Time from produce() to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


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


_metrics_started: set[int] = set()


def serve_metrics(port: int) -> None:
    """Serve /metrics once per process; port 0 turns it off."""
    if port and port not in _metrics_started:
        start_http_server(port, addr="0.0.0.0")
        _metrics_started.add(port)
