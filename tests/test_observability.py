"""Every line a tickflow process writes to stderr is one JSON object, the libraries' logs included."""

from __future__ import annotations

import json
import subprocess
import sys


def test_library_logs_are_rendered_as_json_beside_tickflows_own() -> None:
    script = """
import logging, structlog
from streams.observability import configure_logging
configure_logging("INFO", "json")
structlog.get_logger("tickflow.test").info("own event", symbol="BTC/USDT")
logging.getLogger("mode.services").info("[^-Consumer]: Starting...")
logging.getLogger("aiokafka").debug("below the level, dropped")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("confluent_kafka").exception("library failure")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # raises on any non-JSON line
    assert [line["event"] for line in lines] == ["own event", "[^-Consumer]: Starting...", "library failure"]
    assert lines[0]["symbol"] == "BTC/USDT" and lines[0]["level"] == "info"
    assert lines[1]["logger"] == "mode.services" and lines[1]["level"] == "info" and "timestamp" in lines[1]
    assert lines[2]["level"] == "error" and "ValueError: boom" in lines[2]["exception"]


def test_each_role_has_its_own_metrics_port_and_run_shifts_its_sinks_with_the_main_port() -> None:
    from streams.observability import ROLE_METRICS_PORTS, metrics_port, role_port_offset

    assert len(set(ROLE_METRICS_PORTS.values())) == len(ROLE_METRICS_PORTS) == 6
    assert metrics_port("ingest", None) == 9109 and metrics_port("ingest", 9200) == 9200 and metrics_port("ingest", 0) == 0
    assert [9108 + role_port_offset(f"sink-{s}") for s in ("clickhouse", "postgres", "redis")] == [9110, 9111, 9112]


def test_a_taken_metrics_port_ends_the_command_with_one_line_naming_the_setting() -> None:
    import os
    import socket

    from tests.conftest import REPO

    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "KAFKA_BOOTSTRAP": "127.0.0.1:1", "METRICS_PORT": str(port)}
        done = subprocess.run([sys.executable, "-m", "streams", "ingest", "--limit", "1"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: metrics port {port} of tickflow ingest is in use (Address already in use): set --metrics-port or METRICS_PORT to a free port, or 0 to turn metrics off"
    ]
