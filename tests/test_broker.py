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


def test_tansu_ends_with_a_broker_process_killed_outright() -> None:
    """SIGKILL leaves no chance to stop Tansu, which runs in a session of its own: the kernel ends it."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from streams.broker import port_open
    from tests.conftest import REPO

    port = free_port()
    script = f"from streams.broker import EmbeddedBroker; b = EmbeddedBroker({port}).start(); print(b.proc.pid, flush=True); input()"
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    while not line.strip().isdigit():  # structlog's lines come first
        assert line, "the broker process ended"
        line = parent.stdout.readline()
    tansu = Path(f"/proc/{int(line)}/stat")
    assert port_open("127.0.0.1", port)
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def running() -> bool:
        try:
            return tansu.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running()  # its port is free then, though on a busy machine another process may take it at once
