"""The README's side-by-side lines and ``make run``, run as written: every role in its own process
on its default metrics port, `tickflow sql` reading the live embedded store, and SIGTERM stopping
each with exit 0, children included.

Only the broker's port is chosen freely (``BROKER_PORT``): the metrics ports are the defaults the
README promises, so a test fails, saying which, when another process holds one of them.
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
from streams.observability import ROLE_METRICS_PORTS, role_port_offset
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


def makefile_run_line() -> list[str]:
    """The arguments ``make run`` gives ``tickflow``."""
    found = re.search(r"^run:.*\n\t\$\(BIN\)/tickflow (.*)$", (REPO / "Makefile").read_text(), re.M)
    assert found, "Makefile has no run target calling tickflow"
    return shlex.split(found.group(1))


def role(args: list[str]) -> str:
    return f"sink-{args[1]}" if args[0] == "sink" else args[0]


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        return reply.read().decode()


def metrics_answer(port: int) -> bool:
    try:
        return "tickflow_" in metrics(port)
    except OSError:
        return False


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return []


def descendants(pid: int) -> list[int]:
    return [d for c in children(pid) for d in (c, *descendants(c))]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_free(ports: dict[str, int]) -> None:
    taken = [f"{name} {port}" for name, port in ports.items() if port_open("127.0.0.1", port)]
    assert not taken, f"default metrics ports in use by another process, stop it first: {', '.join(taken)}"


class Processes:
    """``tickflow`` commands as subprocesses of the test, each logging to a file of its own."""

    def __init__(self, tmp_path: Path, database: str, broker_port: int) -> None:
        self.env = {k: v for k, v in os.environ.items() if k not in ("METRICS_PORT", "KAFKA_BOOTSTRAP", "CLICKHOUSE_URL")}
        self.env.update(
            {
                "BROKER_PORT": str(broker_port),
                "TICKFLOW_DATA_DIR": str(tmp_path / "data"),
                "DATABASE_URL": database,
                "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                "LOG_LEVEL": "WARNING",
            }
        )
        self.broker = f"127.0.0.1:{broker_port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping: set[str] = set()
        self.logs = tmp_path / "logs"
        self.logs.mkdir()

    def start(self, name: str, args: list[str], **extra: str) -> None:
        out = open(self.logs / name, "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "streams", *args], env={**self.env, **extra}, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.logs / name).read_text()[-3000:]

    def tickflow(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams", *args], env={**self.env, "KAFKA_BOOTSTRAP": self.broker}, cwd=REPO, capture_output=True, text=True, timeout=60)

    def wait_for(self, what: str, check, timeout: float = 90) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not check():
            for name, proc in self.procs.items():
                assert name in self.stopping or proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s"
            time.sleep(0.5)

    def stop(self, *names: str) -> None:
        """SIGTERM each, then expect every one to exit 0."""
        self.stopping.update(names)
        for name in names:
            self.procs[name].send_signal(signal.SIGTERM)
        for name in names:
            assert self.procs[name].wait(60) == 0, f"{name} exited with {self.procs[name].returncode}:\n{self.log(name)}"

    def trades_in_clickhouse(self) -> int:
        done = self.tickflow("sql", "SELECT count() AS n FROM trades", "--format", "csv")
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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
    daemons = {role(args): args for args in lines if args[0] != "sql"}
    (sql_line,) = [args for args in lines if args[0] == "sql"]
    assert list(daemons) == ["broker", "worker", "sink-clickhouse", "sink-postgres", "sink-redis", "ingest"]
    assert_free({name: ROLE_METRICS_PORTS[name] for name in daemons})
    broker_port = free_port()
    run = Processes(tmp_path, database, broker_port)
    try:
        run.start("broker", daemons["broker"])
        run.wait_for("the broker", lambda: port_open("127.0.0.1", broker_port))
        (tansu,) = children(run.procs["broker"].pid)
        for name, args in list(daemons.items())[1:]:
            run.start(name, args, KAFKA_BOOTSTRAP=run.broker)
        for name in daemons:
            port = ROLE_METRICS_PORTS[name]
            run.wait_for(f"/metrics of {name} on {port}", lambda port=port: metrics_answer(port))

        # The store sinks yield the cores to the realtime path, as tickflow run's sink processes do.
        own = os.nice(0)
        nice = {name: int(Path(f"/proc/{run.procs[name].pid}/stat").read_text().rsplit(")", 1)[1].split()[16]) for name in ("sink-clickhouse", "sink-postgres", "sink-redis")}
        assert nice == {"sink-clickhouse": min(own + 19, 19), "sink-postgres": min(own + 19, 19), "sink-redis": own}

        resident = re.search(r"^tickflow_embedded_broker_resident_bytes (\S+)$", metrics(ROLE_METRICS_PORTS["broker"]), re.M)
        assert resident and float(resident.group(1)) > 1e6

        # The README's own query, while the ClickHouse sink holds the embedded store.
        run.wait_for("trades in ClickHouse", lambda: run.trades_in_clickhouse() > 0)
        done = run.tickflow(*sql_line)
        assert done.returncode == 0 and re.search(r"\d", done.stdout), done.stderr[-2000:]
        assert (tmp_path / "data" / "clickhouse.query.json").exists()
        refused = run.tickflow("sql", "DROP TABLE trades")
        assert refused.returncode == 1 and "readonly" in refused.stderr.lower()

        # Ingest stops first: every trade it read is delivered, and the sinks write them all.
        run.stop("ingest")
        ingested = int(re.findall(r"^([\d,]+) trades ", run.log("ingest"), re.M)[-1].replace(",", ""))
        assert ingested > 0
        run.wait_for(f"{ingested} trades in ClickHouse", lambda: run.trades_in_clickhouse() == ingested, timeout=60)

        run.stop("worker", "sink-clickhouse", "sink-postgres", "sink-redis", "broker")
        assert not alive(tansu), "the broker's Tansu process outlived it"
        assert not (tmp_path / "data" / "clickhouse.query.json").exists()
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM trades").fetchone() == (ingested,)
        # With no sink running, tickflow sql opens the store itself.
        assert run.trades_in_clickhouse() == ingested
    finally:
        run.kill()


def test_make_run_answers_tickflow_sql_and_stops_with_its_children_on_sigterm(tmp_path: Path, database: str) -> None:
    args = makefile_run_line()
    assert args[0] == "run"
    main = ROLE_METRICS_PORTS["worker"]
    ports = {"run": main, **{f"its {s} sink": main + role_port_offset(f"sink-{s}") for s in ("clickhouse", "postgres", "redis")}}
    assert_free(ports)
    broker_port = free_port()
    run = Processes(tmp_path, database, broker_port)
    try:
        run.start("run", args)
        for name, port in ports.items():
            run.wait_for(f"/metrics of {name} on {port}", lambda port=port: metrics_answer(port))
        run.wait_for("trades in ClickHouse", lambda: run.trades_in_clickhouse() > 0)
        family = descendants(run.procs["run"].pid)
        assert len(family) >= 4, family  # Tansu and three sink processes at least
        run.stop("run")
        run.wait_for("the run's processes to end", lambda: not any(alive(pid) for pid in family), timeout=15)
    finally:
        run.kill()
