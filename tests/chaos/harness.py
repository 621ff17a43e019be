"""The fault harness: one seeded replay file, tickflow's roles side by side as users run them, and
ordered dumps of every stored table compared with a clean run's.

Stable API (other chaos scenarios import it):

- ``CHAOS_TRADES``, ``CHAOS_SEED``, ``CHAOS_KILLS``: trades per replay file, its seed, and how
  often a scenario kills the worker, from the environment (``TICKFLOW_CHAOS_TRADES``, default
  20,000, and ``TICKFLOW_CHAOS_KILLS``, default 2, keep ``make test`` cheap; ``make chaos`` sets
  1,000,000 and 5; ``TICKFLOW_CHAOS_SEED``).
- :func:`ingest_seconds` ``(replay)``: how long a scenario paces ingest (``Roles.start_all(replay,
  ingest_s=...)``), so that faults land while trades still arrive.
- :func:`write_replay` ``(path, trades, seed) -> Replay``: a Tardis-format CSV of ``trades`` trades
  over several symbols, the same bytes for the same arguments (a few trades out of order within the
  allowed lateness, a few later than that but within the grace period, so candles get revisions).
- :func:`replay_file` ``(trades, seed) -> Replay``: that file, written once per process and reused.
- :func:`fresh_database` (context manager): the URL of a new PostgreSQL database beside
  ``DATABASE_URL``'s, dropped afterwards.
- :class:`Roles` ``(workdir, database_url)``: ``tickflow broker|worker|sink NAME|ingest`` as
  subprocesses on one embedded broker (a free port), one data dir and one database, with the
  product's default settings otherwise. ``start_all(replay)``, ``start(name, *args)``,
  ``kill(name)`` (SIGKILL), ``stop(*names)`` (SIGTERM, expects exit 0), ``alive(name)``,
  ``log(name)``, ``progress()`` (records in the topics), ``wait_settled()`` (everything read,
  written and committed, every open window closed), ``dump(out_dir) -> Dump``, ``close()``.
- :func:`replay_and_dump` ``(path, workdir, speed=) -> Dump``: ``tickflow run --source
  replay:PATH --until-drained`` into fresh stores, then their dumps.
- :func:`clean_dump` ``(replay, workdir, speed=NO_WAIT_SPEED) -> Dump``: the reference, that run at
  ``speed``, computed once per file, speed and process. Ingest in a faulted run must be paced as
  the clean run it is compared with (``start_all`` does it for ``NO_WAIT_SPEED``): replays paced
  differently cut trade batches differently, which numbers candle revisions differently.
- :func:`differences` ``(clean, other) -> list[str]``: empty when every table holds the same rows
  in both; else which table, row counts and the first differing lines.
- :func:`compare` ``(scenario, clean, roles, replay, kills=, started=)``: dump ``roles``' stores, add the
  line of ``make chaos``'s summary (:func:`record`; ``TICKFLOW_CHAOS_SUMMARY`` names the file,
  nothing is written without it) and fail with the differences, if any.

A scenario that runs the roles is marked ``@pytest.mark.chaos``: ``make chaos`` runs those at 1M
trades (``-m chaos``) and prints their rows; ``make test`` leaves them out (``-m "not chaos"``) and
runs a cheap combined run instead. The fixtures ``chaos_replay`` and ``chaos_clean`` (conftest.py)
give the session's replay file and its clean dumps.

Dumps are files, one per store and table, ``SELECT *`` ordered by the table's key (ClickHouse with
FINAL, read through the process owning the embedded store, as ``tickflow sql`` does); equal means
byte-equal: no lost row, no doubled row, no changed value.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streams.broker import die_with_parent
from tests.conftest import REPO

CHAOS_TRADES = int(os.environ.get("TICKFLOW_CHAOS_TRADES", "20000"))
CHAOS_SEED = int(os.environ.get("TICKFLOW_CHAOS_SEED", "20261207"))
CHAOS_KILLS = int(os.environ.get("TICKFLOW_CHAOS_KILLS", "2"))  # worker kills: each restart waits out a rebalance
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT")
START_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
MEAN_GAP_US = 100_000  # all symbols together: 10 trades/s of event time, so 20,000 trades span 33 minutes
# Every ingest of the harness is paced, at least at this speed (which never waits): paced and
# unpaced replays cut trade batches differently (``BATCH_MAX_MS`` vs ``UNPACED_BATCH_MAX_MS``), and
# a candle's revision number counts the revisions its batches caused, so the clean run and the
# faulted ones must read the same ``ticks`` log.
NO_WAIT_SPEED = "1000000x"
SETTLE_S = 3.0  # everything read and committed this long: Tansu's end offsets can trail the last batch
PG_DEFAULT = "postgresql://127.0.0.1:5432/test"


# -- the replay file


@dataclass(frozen=True)
class Replay:
    path: Path
    trades: int
    seed: int
    symbols: tuple[str, ...]
    span_s: float  # event time from the first trade to the last

    def speed_for(self, seconds: float) -> str:
        """The ``--speed`` that makes ingest take about ``seconds``."""
        return f"{max(self.span_s / seconds, 1.0):.1f}x"


def write_replay(path: Path, trades: int, seed: int = CHAOS_SEED, symbols: tuple[str, ...] = SYMBOLS) -> Replay:
    """A seeded random walk per symbol in Tardis CSV (one file, several symbols). About 1% of the
    trades arrive up to 1.5 s late (within ``CANDLE_LATENESS_MS``) and 0.1% 5-40 s late (within
    ``CANDLE_GRACE_MS``: they revise final candles)."""
    rng = random.Random(seed)
    prices = {s: 10.0 ** rng.uniform(-1, 4.5) for s in symbols}
    ids = dict.fromkeys(symbols, 1_000_000)
    weights = [rng.uniform(0.5, 3.0) for _ in symbols]
    now = START_US
    rows: list[tuple[int, str]] = []
    for _ in range(trades):
        now += int(rng.expovariate(1 / MEAN_GAP_US)) + 1
        sym = rng.choices(symbols, weights)[0]
        prices[sym] *= 1 + rng.gauss(0, 0.0004)
        ids[sym] += 1
        late = rng.random()
        ts = now - (rng.randint(5_000_000, 40_000_000) if late < 0.001 else rng.randint(1, 1_500_000) if late < 0.011 else 0)
        side = "buy" if rng.random() < 0.5 else "sell"
        amount = round(rng.lognormvariate(0, 1.2) * 100 / prices[sym] ** 0.5, 6) or 0.000001
        rows.append((now, f"binance,{sym},{ts},{now},{ids[sym]},{side},{prices[sym]:.8g},{amount}\n"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
        f.writelines(line for _, line in rows)
    return Replay(path, trades, seed, symbols, (now - START_US) / 1e6)


def ingest_seconds(replay: Replay) -> float:
    """How long a scenario's paced ingest lasts: 8 s for the short file, 1M trades at 4,000 trades/s."""
    return max(8.0, replay.trades / 4000)


_REPLAYS: dict[tuple[int, int], Replay] = {}


def replay_file(trades: int = CHAOS_TRADES, seed: int = CHAOS_SEED, directory: Path | None = None) -> Replay:
    """The replay file of ``trades`` and ``seed``, written once per process (under ``directory``,
    default a folder of the system's temporary directory)."""
    key = (trades, seed)
    if key not in _REPLAYS or not _REPLAYS[key].path.exists():
        base = directory or Path(os.environ.get("TMPDIR", "/tmp")) / f"tickflow-chaos-{os.getpid()}"
        _REPLAYS[key] = write_replay(base / f"trades-{trades}-{seed}.csv", trades, seed)
    return _REPLAYS[key]


# -- stores


def _admin_url() -> str:
    return os.environ.get("DATABASE_URL") or PG_DEFAULT


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new database on ``DATABASE_URL``'s server (named after its database), dropped afterwards."""
    import psycopg

    admin = _admin_url()
    base = admin.rsplit("/", 1)
    name = f"{base[1] or 'tickflow'}_chaos_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    from streams.broker import free_port as free

    return free()


def role_env(workdir: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of every role: the product's defaults but for the stores and the data dir.
    Settings a developer may have exported for other work are dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOPIC_", "KAFKA_", "APP_ID", "METRICS_PORT", "CLICKHOUSE_URL", "TICKFLOW_"))}
    env.update(
        {
            "TICKFLOW_DATA_DIR": str(workdir / "data"),
            "DATABASE_URL": database_url,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "BROKER_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def tickflow(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


# -- dumps


@dataclass(frozen=True)
class TableDump:
    path: Path
    rows: int
    digest: str


@dataclass
class Dump:
    tables: dict[str, TableDump] = field(default_factory=dict)  # "clickhouse.candles" -> its dump

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    def derived_rows(self) -> int:
        """Rows of the tables the agents write (every table but the input's ``trades``)."""
        return sum(t.rows for name, t in self.tables.items() if not name.endswith(".trades"))


def stored_tables() -> dict[str, tuple[str, ...]]:
    """Every table the sinks write, with its key: the record registry's, so later agents' tables count too."""
    from schemas.registry import RECORDS
    from sinks.base import layout_of

    layouts = [layout_of(name) for name in RECORDS]
    return {layout.table: layout.unique_key for layout in layouts if layout is not None}


def _write_rows(path: Path, columns: list[str], rows: Iterator[tuple] | list[tuple]) -> TableDump:
    digest = hashlib.sha256()
    n = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow([repr(v) if isinstance(v, float) else v for v in row])
            n += 1
    digest.update(path.read_bytes())
    return TableDump(path, n, digest.hexdigest())


def dump_stores(out_dir: Path) -> Dump:
    """Ordered dumps of every stored table of the ClickHouse store (through the process owning it,
    or opening it when none does) and of ``DATABASE_URL``, under ``out_dir``. Runs in the process
    of ``python -m tests.chaos.harness dump``: chdb is never opened by the test process."""
    import psycopg

    from sinks.query import query
    from streams.settings import Settings

    settings = Settings()
    out_dir.mkdir(parents=True, exist_ok=True)
    dump = Dump()
    for table, key in stored_tables().items():
        order = ", ".join(f"`{c}`" for c in key)
        result = query(settings, f"SELECT * FROM {table} FINAL ORDER BY {order}")
        dump.tables[f"clickhouse.{table}"] = _write_rows(out_dir / f"clickhouse.{table}.csv", list(result.column_names), result.rows)
        if settings.stores.database_url:
            with psycopg.connect(settings.stores.database_url) as conn, conn.cursor() as cur:
                cur.execute(f"SELECT * FROM {table} ORDER BY {', '.join(f'{chr(34)}{c}{chr(34)}' for c in key)}")
                columns = [d.name for d in cur.description or []]
                dump.tables[f"postgres.{table}"] = _write_rows(out_dir / f"postgres.{table}.csv", columns, cur)
    return dump


def dump_with(env: dict[str, str], out_dir: Path) -> Dump:
    """:func:`dump_stores` in a subprocess with ``env`` (the roles' environment)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos.harness", "dump", str(out_dir)], env=env, cwd=REPO, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise AssertionError(f"dump failed:\n{done.stderr[-3000:]}")
    doc = json.loads(done.stdout.splitlines()[-1])
    return Dump({name: TableDump(Path(t["path"]), t["rows"], t["digest"]) for name, t in doc.items()})


def differences(clean: Dump, other: Dump, *, lines: int = 5) -> list[str]:
    """What differs between two dumps, table by table; empty when they are equal."""
    out = []
    for name in sorted(set(clean.tables) | set(other.tables)):
        a, b = clean.tables.get(name), other.tables.get(name)
        if a is None or b is None:
            out.append(f"{name}: only in {'the clean run' if b is None else 'this run'}")
            continue
        if a.digest == b.digest:
            continue
        left, right = a.path.read_text().splitlines(), b.path.read_text().splitlines()
        lost = sorted(set(left) - set(right))
        added = sorted(set(right) - set(left))
        doubled = len(right) - len(set(right))
        out.append(
            f"{name}: {a.rows} rows in the clean run, {b.rows} here; {len(lost)} missing, {len(added)} new or changed, {doubled} doubled"
            + "".join(f"\n  - {line}" for line in lost[:lines])
            + "".join(f"\n  + {line}" for line in added[:lines])
        )
    return out


def replay_and_dump(path: Path, workdir: Path, *, speed: str | None = NO_WAIT_SPEED) -> Dump:
    """``tickflow run --source replay:PATH [--speed S] --until-drained`` with default settings (its
    own embedded broker) into a fresh database and ``workdir/data``, then dumps of both stores."""
    with fresh_database() as database:
        env = role_env(workdir, database, METRICS_PORT="0", REDIS_URL="")  # the analytic stores only
        pace = ("--speed", speed) if speed else ()
        done = tickflow("run", "--source", f"replay:{path}", *pace, "--until-drained", "--quiet", env=env, timeout=3600)
        if done.returncode != 0:
            raise AssertionError(f"tickflow run failed:\n{done.stderr[-3000:]}")
        return dump_with(env, workdir / "dump")


_CLEAN: dict[tuple[Path, str], Dump] = {}


def clean_dump(replay: Replay, workdir: Path, *, speed: str = NO_WAIT_SPEED) -> Dump:
    """The reference: the README's one-command replay at ``speed`` (:func:`replay_and_dump`),
    computed once per replay file, speed and process. A scenario compares with a clean run at its
    own ingest's speed: a candle's ``revision`` counts re-emissions, which are coalesced per batch
    the worker reads, and pacing changes those batches (the values never depend on them)."""
    key = (replay.path, speed)
    if key not in _CLEAN:
        _CLEAN[key] = replay_and_dump(replay.path, workdir, speed=speed)
    return _CLEAN[key]


# -- the roles


ROLE_ARGS: dict[str, tuple[str, ...]] = {
    "broker": ("broker",),
    "worker": ("worker",),
    "sink-clickhouse": ("sink", "clickhouse"),
    "sink-postgres": ("sink", "postgres"),
    "sink-redis": ("sink", "redis"),
}


class Roles:
    """``tickflow`` roles as subprocesses of the test, side by side as the README runs them: one
    embedded broker on a free port, each role on a metrics port of its own (free ports: other
    runs may hold the defaults), logs in ``workdir/logs``."""

    def __init__(self, workdir: Path, database_url: str, **env: str) -> None:
        self.workdir = workdir
        self.env = role_env(workdir, database_url, **env)
        self.bootstrap = f"127.0.0.1:{self.env['BROKER_PORT']}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.started: dict[str, int] = {}  # how often each name was started
        self.down: set[str] = set()  # roles killed or stopped on purpose and not started again since
        self._lags: list | None = None
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # processes

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start role ``name`` (``ROLE_ARGS[name]`` unless ``args`` are given; ``worker-2`` runs a
        second worker); it logs to ``logs/<name>.<n>``."""
        args = args or ROLE_ARGS[name.rsplit("-", 1)[0] if name.startswith("worker-") else name]
        n = self.started[name] = self.started.get(name, 0) + 1
        self.down.discard(name)
        port = self.ports[name] = free_port()
        env = {**self.env, "METRICS_PORT": str(port)}
        if args[0] != "broker":
            env["KAFKA_BOOTSTRAP"] = self.bootstrap
        with (self.logs / f"{name}.{n}").open("w") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "streams", *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent()
            )
        return self.procs[name]

    def start_all(self, replay: Replay, *, workers: int = 1, ingest_s: float | None = None, ingest_args: tuple[str, ...] = ()) -> None:
        """The README's side-by-side block with ``replay`` as the source: broker, workers, every
        configured sink, then ingest once the workers have their partitions: with ``ingest_args``
        (e.g. ``("--speed", "100x")``), else paced to last about ``ingest_s`` or at ``NO_WAIT_SPEED``."""
        from streams.broker import port_open

        self.start("broker")
        self.wait_for("the broker", lambda: port_open("127.0.0.1", int(self.env["BROKER_PORT"])) and self._topics_ready())
        for i in range(workers):
            self.start("worker" if i == 0 else f"worker-{i + 1}")
        for name in self.sinks():
            self.start(name)
        self.wait_for("the workers' partitions", self.workers_timing)
        speed = replay.speed_for(ingest_s) if ingest_s else NO_WAIT_SPEED
        self.start("ingest", "ingest", "--source", f"replay:{replay.path}", *(ingest_args or ("--speed", speed)))

    def sinks(self) -> list[str]:
        return ["sink-clickhouse", *(["sink-postgres"] if self.env.get("DATABASE_URL") else []), *(["sink-redis"] if self.env.get("REDIS_URL") else [])]

    def _topics_ready(self) -> bool:
        from streams.topics import end_offsets

        try:
            return self.settings.kafka.topic_ticks in end_offsets(self.settings, timeout=2)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def kill(self, name: str) -> None:
        """SIGKILL: no handler runs, nothing is flushed or committed."""
        proc = self.procs[name]
        self.down.add(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, *names: str, timeout: float = 120) -> None:
        """SIGTERM each, then expect every one to exit 0."""
        self.down.update(names)
        for name in names:
            self.procs[name].send_signal(signal.SIGTERM)
        for name in names:
            code = self.procs[name].wait(timeout)
            assert code == 0, f"{name} exited with {code}:\n{self.log(name)}"

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.logs / f"{name}.{self.started.get(name, 1)}"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Roles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tickflow(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return tickflow(*args, env={**self.env, "KAFKA_BOOTSTRAP": self.bootstrap, "METRICS_PORT": "0"}, timeout=timeout)

    # observing

    @property
    def settings(self):  # noqa: ANN201 - streams.settings.Settings, imported late like the rest
        from streams.settings import GROUP_OF, Settings

        env = {**self.env, "KAFKA_BOOTSTRAP": self.bootstrap}
        fields = {f: env[f.upper()] for f in GROUP_OF if f.upper() in env}
        return Settings(**fields)

    def metrics(self, name: str) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            return ""

    def progress(self, topic: str | None = None) -> int:
        """Records in ``topic`` (default ``ticks``) so far."""
        from streams.topics import end_offsets

        settings = self.settings
        return sum(hi for _, _, hi in end_offsets(settings, timeout=5).get(topic or settings.kafka.topic_ticks, []))

    def groups(self) -> dict[str, list[str]]:
        """Consumer group -> topics, of every agent the default settings run and every sink started."""
        from agents.registry import AGENTS
        from schemas.registry import topic_of
        from sinks.runner import SINKS, sink_group_id

        settings = self.settings
        out = {f"{settings.kafka.app_id}-{s.name}": [topic_of(settings, i) for i in s.inputs] for s in AGENTS if s.enabled is None or s.enabled(settings)}
        for name in self.sinks():
            sink = name.removeprefix("sink-")
            out[sink_group_id(settings, sink)] = list(SINKS[sink].topics_for(settings))
        return out

    def lag(self) -> dict[str, int]:
        """Records each consumer group has not committed yet."""
        from sinks.runner import GroupLag

        if self._lags is None:
            conf = {"bootstrap.servers": self.bootstrap}
            self._lags = [GroupLag(conf, group, topics) for group, topics in self.groups().items()]
        return {lag.group_id: lag.total() for lag in self._lags}

    def ends(self) -> dict[str, int]:
        """Records in every topic but the realtime ones (which idle workers keep writing)."""
        from streams.topics import end_offsets

        settings = self.settings
        return {t: sum(hi for _, _, hi in parts) for t, parts in end_offsets(settings, timeout=5).items() if t != settings.kafka.topic_candle_updates}

    def workers_timing(self) -> bool:
        """Every running worker has its partitions and runs its timers (it reports open windows):
        from then on its quiet time counts."""
        workers = [n for n in self.procs if n.startswith("worker") and self.alive(n)]
        return bool(workers) and all("tickflow_candle_open_windows{" in self.metrics(n) for n in workers)

    def wait_for(self, what: str, check, timeout: float = 120) -> None:  # noqa: ANN001
        """Poll ``check`` until true; a role that died unexpectedly (not ingest ending with 0, not
        one killed on purpose) fails it with its log."""
        deadline = time.monotonic() + timeout
        while not check():
            for name, proc in self.procs.items():
                code = proc.poll()
                if code is not None and not (name == "ingest" and code == 0) and name not in self.down:
                    raise AssertionError(f"{name} exited with {code} while waiting for {what}:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout:.0f} s")
            time.sleep(0.3)

    def wait_settled(self, timeout: float | None = None) -> None:
        """Ingest done, then every agent and sink group committed to the end of its topics, the
        workers quiet for longer than ``CANDLE_IDLE_TIMEOUT_S`` (their idle close has run: the last
        minute of every symbol is final), and nothing moved for ``SETTLE_S``."""
        timeout = timeout or 120 + CHAOS_TRADES / 2000
        if "ingest" in self.procs:
            self.wait_for("ingest to finish", lambda: self.procs["ingest"].poll() is not None, timeout)
            assert self.procs["ingest"].returncode == 0, f"ingest exited with {self.procs['ingest'].returncode}:\n{self.log('ingest')}"
        idle_s = self.settings.agents.candle_idle_timeout_s + 1.0
        state: dict[str, object] = {}

        def settled() -> bool:
            now = time.monotonic()
            if any(self.lag().values()) or not self.workers_timing():
                state.clear()
                return False
            quiet_since = state.setdefault("quiet_since", now)
            ends = self.ends()
            if state.get("ends") != ends:
                state["ends"], state["stable_since"] = ends, now
            return now - quiet_since >= idle_s and now - state["stable_since"] >= SETTLE_S  # type: ignore[operator]

        self.wait_for("every group at the end and every worker idle", settled, timeout)

    def dump(self, out_dir: Path | None = None) -> Dump:
        """Ordered dumps of both stores, the ClickHouse one read through the running ClickHouse sink."""
        return dump_with({**self.env, "KAFKA_BOOTSTRAP": self.bootstrap, "METRICS_PORT": "0"}, out_dir or self.workdir / "dump")


# -- make chaos's summary


def record(scenario: str, trades: int, kills: int, dump: Dump, result: str, seconds: float) -> None:
    """Append a row to ``TICKFLOW_CHAOS_SUMMARY`` (JSON lines), when set."""
    target = os.environ.get("TICKFLOW_CHAOS_SUMMARY")
    if not target:
        return
    row = {"scenario": scenario, "trades": trades, "kills": kills, "rows": dump.rows, "result": result, "seconds": round(seconds, 1)}
    with open(target, "a") as f:
        f.write(json.dumps(row) + "\n")


def compare(scenario: str, clean: Dump, roles: Roles, replay: Replay, *, kills: int, started: float) -> Dump:
    """The scenario's end: dump ``roles``' stores, record the summary row, fail on any difference."""
    dump = roles.dump()
    diff = differences(clean, dump)
    record(scenario, replay.trades, kills, dump, "equal" if not diff else f"{len(diff)} tables differ", time.monotonic() - started)
    assert not diff, f"{scenario}: the stores differ from the clean run's:\n" + "\n".join(diff)
    return dump


def summary(path: Path) -> str:
    """``make chaos``'s table: one row per recorded scenario."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    head = ("scenario", "trades", "kills", "rows compared", "result", "seconds")
    cells = [head, *((r["scenario"], f"{r['trades']:,}", str(r["kills"]), f"{r['rows']:,}", r["result"], f"{r['seconds']:.0f}") for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) if rows else "no chaos scenario recorded a result"


def _main(argv: list[str]) -> None:
    if argv[:1] == ["dump"] and len(argv) == 2:
        dump = dump_stores(Path(argv[1]))
        print(json.dumps({name: {"path": str(t.path), "rows": t.rows, "digest": t.digest} for name, t in dump.tables.items()}))
        return
    if argv[:1] == ["summary"] and len(argv) == 2:
        print(summary(Path(argv[1])))
        return
    raise SystemExit("usage: python -m tests.chaos.harness dump OUT_DIR | summary FILE")


if __name__ == "__main__":
    _main(sys.argv[1:])
