"""Drives the Quix Streams app (``benchmarks/quix_app.py``) in its own virtualenv, ``.venv-quix``.

Quix Streams needs a confluent-kafka older than the one tickflow pins, so it cannot share tickflow's
environment: ``make bench`` creates ``.venv-quix`` from ``benchmarks/quix-requirements.txt`` and
each run is a process of that interpreter, reporting one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import tag
from schemas.codec import SCHEMA_DIR

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "quix_app.py"
REQUIREMENTS = Path(__file__).resolve().parent / "quix-requirements.txt"


def quix_python() -> Path | None:
    """The Quix virtualenv's interpreter (``TICKFLOW_QUIX_VENV`` or ``.venv-quix``), None when absent."""
    venv = Path(os.environ.get("TICKFLOW_QUIX_VENV", ROOT / ".venv-quix"))
    python = venv / "bin" / "python"
    return python if python.exists() else None


def quix_version() -> str:
    python = quix_python()
    if python is None:
        return "not installed"
    out = subprocess.run([str(python), "-c", "import quixstreams; print(quixstreams.__version__)"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown version"


def quix_run(bootstrap: str, ticks: str, ends: dict[int, int], timeout_s: float) -> tuple[float, int]:
    """One run of the Quix app on ``ticks`` (a new consumer group and state): seconds from the first
    record to the last offset of every partition, as the app measured them, and the closed candles
    it emitted."""
    python = quix_python()
    if python is None:
        raise RuntimeError(f"no .venv-quix: `make bench` creates it (pip install -r {REQUIREMENTS.relative_to(ROOT)})")
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-quix-") as tmp:
        cmd = [
            str(python), str(APP),
            "--bootstrap", bootstrap, "--topic", ticks, "--ends", json.dumps(ends), "--schemas", str(SCHEMA_DIR),
            "--group", f"bench-quix-{tag()}", "--state-dir", tmp, "--timeout", str(timeout_s),
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 60, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"Quix Streams app did not finish within {timeout_s + 60:.0f} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"Quix Streams app failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return float(report["seconds"]), int(report["candles"])
