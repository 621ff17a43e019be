"""The embedded broker's memory, which grows for as long as it runs, is a metric and in the live summary."""

from __future__ import annotations

from rich.console import Console

from streams.broker import RESIDENT, EmbeddedBroker, free_port
from streams.cli import _summary
from streams.pipeline import RunStatus


def summary_text() -> str:
    console = Console(record=True, width=200)
    console.print(_summary(RunStatus()))
    return console.export_text()


def resident() -> float:
    return RESIDENT.collect()[0].samples[0].value


def test_resident_memory_is_reported_while_the_broker_runs() -> None:
    with EmbeddedBroker(free_port()):
        assert resident() > 1e6
        assert "broker memory" in summary_text() and "MB (embedded, in memory)" in summary_text()
    assert resident() == 0
    assert "broker memory" not in summary_text()
