"""Pipeline health for the dashboard, read from the pipeline's own Prometheus endpoints.

The gateway does not run the pipeline, so it reads what the pipeline publishes: the main
process's ``/metrics`` (``METRICS_PORT``) and its sink processes' (the next ports). The summary
is pure: two scrapes in, input rate, sink lag and dead letters out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(slots=True)
class Scrape:
    at: float  # monotonic seconds
    trades_in: float = 0.0
    dead_letters: float = 0.0
    sink_lag: dict[str, float] = field(default_factory=dict)
    reached: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


def add_text(scrape: Scrape, text: str) -> None:
    """Add one endpoint's metrics to ``scrape`` (malformed text raises ValueError)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tickflow_trades_in_total":
                scrape.trades_in += s.value
            elif s.name == "tickflow_dlq_records_total":
                scrape.dead_letters += s.value
            elif s.name == "tickflow_sink_lag":
                scrape.sink_lag[s.labels.get("sink", "?")] = s.value


def summary(now: Scrape, before: Scrape | None) -> dict[str, object]:
    rate = None
    if before is not None and now.at > before.at and now.trades_in >= before.trades_in:
        rate = (now.trades_in - before.trades_in) / (now.at - before.at)
    return {
        "input_trades_total": now.trades_in,
        "input_trades_per_s": rate,
        "sink_lag": now.sink_lag,
        "dead_letters_total": now.dead_letters,
        "endpoints_reached": now.reached,
        "endpoints_unreachable": now.unreachable,
    }


def default_endpoints(metrics_port: int) -> list[str]:
    """Where ``tickflow run`` serves metrics: the main process and the next four ports, where its sink processes serve theirs."""
    if not metrics_port:
        return []
    return [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(5)]
