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
    logging.getLogger("faust").exception("library failure")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # raises on any non-JSON line
    assert [line["event"] for line in lines] == ["own event", "[^-Consumer]: Starting...", "library failure"]
    assert lines[0]["symbol"] == "BTC/USDT" and lines[0]["level"] == "info"
    assert lines[1]["logger"] == "mode.services" and lines[1]["level"] == "info" and "timestamp" in lines[1]
    assert lines[2]["level"] == "error" and "ValueError: boom" in lines[2]["exception"]
