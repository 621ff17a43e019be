"""Versioned SQL migrations for ClickHouse and PostgreSQL/TimescaleDB.

Files are ``infra/sql/<store>/NNNN_name.sql``, applied in version order and recorded in a
``schema_migrations`` table of that store, so a re-run applies only what is new.

PostgreSQL has two flavours. A file in ``infra/sql/postgres/timescale/`` is the TimescaleDB variant
of its version: in TimescaleDB mode (``TIMESCALE``, decided by :mod:`sinks.timescale`) it replaces
the plain file of the same version (if any); otherwise the plain file is applied, or, with no plain
file, the version is recorded as ``skipped``. Converting a plain database (``TIMESCALE=on``)
applies the skipped versions and re-applies those that have a TimescaleDB file, with
``migrate_data``, in the same single transaction as everything else. ``schema_migrations.variant``
says which flavour each version got. TimescaleDB files use ``{{name}}`` placeholders filled from
:data:`TIMESCALE_PARAMS`, so chunk sizes are set in one place.

ClickHouse DDL is not transactional: its migrations must be re-runnable (``IF NOT EXISTS``) in case
one fails halfway. PostgreSQL runs a whole migration run in one transaction under an advisory lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog

from sinks.timescale import Mode, decide, hypertables_in, policy_statements, read_facts
from streams.settings import PROJECT_ROOT, Settings

log = structlog.get_logger(__name__)

SQL_ROOT = PROJECT_ROOT / "infra" / "sql"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PARAM_RE = re.compile(r"\{\{(\w+)\}\}")
_LOCK_KEY = 0x7469636B  # "tick": serialises concurrent `tickflow migrate` runs on one database

# TimescaleDB layout: trades are high-volume (small chunks), candles small. Compression and
# retention are opt-in settings applied after the migrations (sinks.timescale.policy_statements).
TIMESCALE_PARAMS: dict[str, str] = {
    "trades_chunk_interval": "1 day",
    "candles_chunk_interval": "7 days",
    "cagg_refresh_every": "15 minutes",
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    path: Path | None  # None: no file of this flavour (a TimescaleDB-only version on plain PostgreSQL)
    timescale: bool = False

    def statements(self, params: dict[str, str] | None = None, *, backslash_escapes: bool = False) -> list[str]:
        if self.path is None:
            return []
        return split_statements(render(self.path.read_text(), params or {}, str(self.path)), backslash_escapes=backslash_escapes)


def render(sql: str, params: dict[str, str], source: str = "sql") -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in params:
            raise KeyError(f"{source}: no value for placeholder {{{{{m.group(1)}}}}}")
        return params[m.group(1)]

    return _PARAM_RE.sub(sub, sql)


def split_statements(sql: str, *, backslash_escapes: bool = False) -> list[str]:
    """Split a script on top-level ``;``, respecting quotes, ``$tag$`` bodies and comments.

    Comment-only pieces are dropped; the text of each statement is otherwise kept as written.
    ``backslash_escapes``: ClickHouse string literals use ``\\'``; PostgreSQL's do not.
    """
    out: list[str] = []
    start = 0
    has_code = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if ch in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote is an escaped quote
                        j += 2
                        continue
                    break
                if backslash_escapes and sql[j] == "\\":
                    j += 1
                j += 1
            i, has_code = j + 1, True
            continue
        if ch == "$":
            m = re.match(r"\$[A-Za-z_]*\$", sql[i:])
            if m:
                j = sql.find(m.group(0), i + len(m.group(0)))
                i, has_code = (n if j < 0 else j + len(m.group(0))), True
                continue
        if ch == ";":
            if has_code:
                out.append(sql[start:i].strip())
            start, has_code = i + 1, False
        elif not ch.isspace():
            has_code = True
        i += 1
    if has_code:
        out.append(sql[start:].strip())
    return out


def _files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        m = _FILE_RE.match(path.name)
        if not m:
            continue
        if m.group(1) in found:
            raise ValueError(f"two migrations with version {m.group(1)} in {folder}")
        found[m.group(1)] = path
    return found


def discover(store: str, *, timescale: bool = False, root: Path = SQL_ROOT) -> list[Migration]:
    """Migrations of ``store`` in order; for postgres, the flavour chosen by ``timescale``."""
    plain = _files(root / store)
    special = _files(root / store / "timescale") if store == "postgres" else {}
    out = []
    for version in sorted(plain.keys() | special.keys()):
        if timescale and version in special:
            path, ts = special[version], True
        else:
            path, ts = plain.get(version), False
        named = path or special[version]
        out.append(Migration(version, _FILE_RE.match(named.name).group(2), path, ts))  # type: ignore[union-attr]
    return out


# ClickHouse


_ENGINE_RE = re.compile(r"\bENGINE\s*=\s*(Replacing|Summing|Aggregating|Collapsing|VersionedCollapsing)?MergeTree\b", re.I)


def replicated_engines(sql: str) -> str:
    """The statement with MergeTree-family engines made Replicated (pure). In a database of the
    Replicated engine, DDL reaches every replica and a Replicated table without arguments takes the
    database's default Keeper path, so the same migrations serve one server and a cluster."""
    return _ENGINE_RE.sub(lambda m: f"ENGINE = Replicated{m.group(1) or ''}MergeTree", sql)


def _ch_replicated(client: Any) -> bool:
    rows = client.query("SELECT engine FROM system.databases WHERE name = currentDatabase()").result_rows
    return bool(rows) and rows[0][0] == "Replicated"


def _ch_applied(client: Any, adapt: Any) -> set[str]:
    client.command(
        adapt(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version String, name String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
        )
    )
    return {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}


def migrate_clickhouse(client: Any, *, root: Path = SQL_ROOT) -> list[str]:
    """Apply pending ClickHouse migrations through a clickhouse-connect client; return their versions.
    In a Replicated database (a cluster) the tables are made Replicated (:func:`replicated_engines`)."""
    adapt = replicated_engines if _ch_replicated(client) else (lambda sql: sql)
    applied = _ch_applied(client, adapt)
    done = []
    for mig in discover("clickhouse", root=root):
        if mig.version in applied:
            continue
        for stmt in mig.statements(backslash_escapes=True):
            client.command(adapt(stmt))
        client.insert("schema_migrations", [[mig.version, mig.name]], column_names=["version", "name"])
        log.info("migration applied", store="clickhouse", version=mig.version, name=mig.name)
        done.append(mig.version)
    return done


# PostgreSQL / TimescaleDB

_PG_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    variant text NOT NULL CHECK (variant IN ('postgres', 'timescaledb', 'skipped'))
)"""


@dataclass(frozen=True, slots=True)
class PostgresResult:
    applied: list[str]  # versions applied by this run
    report: str  # the TimescaleDB mode and why, for ``tickflow migrate``
    policies: list[str]  # policy statements run (TimescaleDB mode)


def postgres_options(settings: Settings) -> dict[str, Any]:
    """The migration options that come from settings: mode and opt-in policies."""
    return {"timescale": settings.timescale, "compression": settings.timescale_compression, "retention": settings.timescale_trades_retention or None}


def migrate_postgres(
    conninfo: str, *, timescale: Mode | bool | None = "auto", compression: bool = False, retention: str | None = None, root: Path = SQL_ROOT
) -> list[str]:
    """Apply pending PostgreSQL migrations; return the versions applied now (see :func:`run_postgres_migrations`)."""
    return run_postgres_migrations(conninfo, timescale=timescale, compression=compression, retention=retention, root=root).applied


def run_postgres_migrations(
    conninfo: str, *, timescale: Mode | bool | None = "auto", compression: bool = False, retention: str | None = None, root: Path = SQL_ROOT
) -> PostgresResult:
    """Apply pending PostgreSQL migrations in the mode ``timescale`` (auto/on/off; True/False/None
    mean on/off/auto) decides, in one transaction under an advisory lock, then make the TimescaleDB
    policies match ``compression`` and ``retention``. TimescaleError, with nothing changed, when
    the mode cannot be had."""
    mode: Mode = {True: "on", False: "off", None: "auto"}.get(timescale, timescale)  # type: ignore[arg-type, call-overload]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            return _migrate_postgres(conn, mode, compression, retention, root)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _query(conn: psycopg.Connection[Any]) -> Any:
    return lambda sql, params: conn.execute(sql, params or None).fetchall()


def _migrate_postgres(conn: psycopg.Connection[Any], mode: Mode, compression: bool, retention: str | None, root: Path) -> PostgresResult:
    conn.execute(_PG_TABLE)
    recorded = dict(conn.execute("SELECT version, variant FROM schema_migrations").fetchall())
    ts_files = [m for m in discover("postgres", timescale=True, root=root) if m.timescale]
    pending_ts = [m for m in ts_files if recorded.get(m.version) in (None, "skipped", "postgres")]
    candidates = [pair for m in pending_ts for pair in hypertables_in("\n".join(m.statements(TIMESCALE_PARAMS)))]
    plan = decide(mode, read_facts(_query(conn), recorded, candidates))
    log.info("postgres migrations", mode=mode, timescale=plan.timescale, report=plan.report)
    done: list[str] = []
    policies: list[str] = []
    with conn.transaction():  # one transaction: a failure leaves the database as it was, never half-converted
        if plan.create_extension:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        for mig in discover("postgres", timescale=plan.timescale, root=root):
            state = recorded.get(mig.version)
            if state not in (None, "skipped") and not (plan.timescale and mig.timescale and state == "postgres"):
                continue
            if mig.path is None:
                if state is None:
                    conn.execute("INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, 'skipped')", (mig.version, mig.name))
                    log.info("migration skipped until timescaledb mode", version=mig.version, name=mig.name)
                continue
            variant = "timescaledb" if mig.timescale else "postgres"
            for stmt in mig.statements(TIMESCALE_PARAMS):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, %s) "
                "ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, variant = EXCLUDED.variant, applied_at = now()",
                (mig.version, mig.name, variant),
            )
            log.info("migration applied", store="postgres", version=mig.version, name=mig.name, variant=variant)
            done.append(mig.version)
        if plan.timescale:
            info = conn.execute(
                "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_schema = current_schema()"
            ).fetchall()
            hyper = {name for name, _ in info}
            compressed = {name for name, enabled in info if enabled}
            for sql, params in policy_statements(hyper, compressed, compression=compression, retention=retention):
                conn.execute(sql, params or None)
                policies.append(sql % tuple(repr(p) for p in params) if params else sql)
    return PostgresResult(done, plan.report, policies)
