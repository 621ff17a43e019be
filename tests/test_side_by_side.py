"""The README's side-by-side lines, run as written: every role in its own process on its default
metrics port, `tickflow sql` reading the live embedded store, and SIGTERM stopping each with exit 0.

Only the broker's port is chosen freely (``BROKER_PORT``): the metrics ports are the defaults the
README promises, so the test fails, saying which, when another process holds one of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from streams.broker import free_port, port_open
from streams.observability import ROLE_METRICS_PORTS
from tests.conftest import REPO

pytestmark = pytest.mark.integration

PG_ADMIN = "postgresql://127.0.0.1:5432/test"


def readme_lines() -> list[list[str]]:
    """The `tickflow` commands of the README's "Side by side" block, as argument lists."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"### Side by side\n.*?```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no Side by side block"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [args[1:] for args in lines if args and args[0] == ".venv/bin/tickflow"]


def role(args: list[str]) -> str:
    return f"sink-{args[1]}" if args[0] == "sink" else args[0]


def metrics_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return reply.status == 200 and b"tickflow_" in reply.read()
    except OSError:
        return False


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def database() -> Iterator[str]:
    name = f"tickflow_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_ADMIN} unreachable: {exc}")
    try:
        yield f"postgresql://127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_readme_side_by_side_lines_run_answer_sql_and_stop_on_sigterm(tmp_path: Path, database: str) -> None:
    lines = readme_lines()
    daemons = [args for args in lines if args[0] != "sql"]
    (sql_line,) = [args for args in lines if args[0] == "sql"]
    assert [role(a) for a in daemons] == ["broker", "worker", "sink-clickhouse", "sink-postgres", "sink-redis", "ingest"]
    taken = [f"{role(a)} {ROLE_METRICS_PORTS[role(a)]}" for a in daemons if port_open("127.0.0.1", ROLE_METRICS_PORTS[role(a)])]
    assert not taken, f"default metrics ports in use by another process, stop it first: {', '.join(taken)}"

    broker_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("METRICS_PORT", "KAFKA_BOOTSTRAP", "CLICKHOUSE_URL")}
    env.update(
        {
            "BROKER_PORT": str(broker_port),
            "TICKFLOW_DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": database,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "LOG_LEVEL": "WARNING",
        }
    )
    procs: dict[str, subprocess.Popen] = {}
    stopping: set[str] = set()
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(args: list[str], extra: dict[str, str]) -> None:
        out = open(logs / role(args), "w")  # noqa: SIM115 - closed with the process
        procs[role(args)] = subprocess.Popen([sys.executable, "-m", "streams", *args], env={**env, **extra}, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def tickflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams", *args], env={**env, "KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}"}, cwd=REPO, capture_output=True, text=True, timeout=60)

    def wait_for(what: str, check, timeout: float = 90) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not check():
            for name, proc in procs.items():
                assert name in stopping or proc.poll() is None, f"{name} exited with {proc.returncode}:\n{(logs / name).read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s"
            time.sleep(0.5)

    def trades_in_clickhouse() -> int:
        done = tickflow(*sql_line[:1], "SELECT count() AS n FROM trades", "--format", "csv")
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    try:
        start(daemons[0], {})
        wait_for("the broker", lambda: port_open("127.0.0.1", broker_port))
        (tansu,) = children(procs["broker"].pid)
        for args in daemons[1:]:
            start(args, {"KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}"})
        for args in daemons:
            port = ROLE_METRICS_PORTS[role(args)]
            wait_for(f"/metrics of {role(args)} on {port}", lambda port=port: metrics_answer(port))

        # The README's own query, while the ClickHouse sink holds the embedded store.
        wait_for("trades in ClickHouse", lambda: trades_in_clickhouse() > 0)
        done = tickflow(*sql_line)
        assert done.returncode == 0 and re.search(r"\d", done.stdout), done.stderr[-2000:]
        assert (tmp_path / "data" / "clickhouse.query.json").exists()
        refused = tickflow("sql", "DROP TABLE trades")
        assert refused.returncode == 1 and "readonly" in refused.stderr.lower()

        # Ingest stops first: every trade it read is delivered, and the sinks write them all.
        stopping.add("ingest")
        procs["ingest"].send_signal(signal.SIGTERM)
        assert procs["ingest"].wait(60) == 0, (logs / "ingest").read_text()[-3000:]
        ingested = int(re.findall(r"^([\d,]+) trades ", (logs / "ingest").read_text(), re.M)[-1].replace(",", ""))
        assert ingested > 0
        wait_for(f"{ingested} trades in ClickHouse", lambda: trades_in_clickhouse() == ingested, timeout=60)

        for name in ("worker", "sink-clickhouse", "sink-postgres", "sink-redis", "broker"):
            procs[name].send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            assert proc.wait(60) == 0, f"{name} exited with {proc.returncode}:\n{(logs / name).read_text()[-3000:]}"
        assert not alive(tansu), "the broker's Tansu process outlived it"
        assert not port_open("127.0.0.1", broker_port)
        assert not (tmp_path / "data" / "clickhouse.query.json").exists()
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM trades").fetchone() == (ingested,)
        # With no sink running, tickflow sql opens the store itself.
        assert trades_in_clickhouse() == ingested
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
