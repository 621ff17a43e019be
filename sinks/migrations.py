"""Versioned SQL migrations for ClickHouse and PostgreSQL/TimescaleDB.

Files are ``infra/sql/<store>/NNNN_name.sql``, applied in version order and recorded in a
``schema_migrations`` table of that store, so a re-run applies only what is new.

PostgreSQL has two flavours. A file in ``infra/sql/postgres/timescale/`` is the TimescaleDB variant
of its version: when the extension is available it replaces the plain file of the same version (if
any); otherwise the plain file is applied, or, with no plain file, the version is recorded as
``skipped`` and applied on a later run once TimescaleDB is there. ``schema_migrations.variant`` says
which flavour each version got. TimescaleDB files use ``{{name}}`` placeholders filled from
:data:`TIMESCALE_PARAMS`, so chunk sizes and policies are set in one place.

ClickHouse DDL is not transactional: its migrations must be re-runnable (``IF NOT EXISTS``) in case
one fails halfway. PostgreSQL runs each migration in a transaction under an advisory lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog

from streams.settings import PROJECT_ROOT

log = structlog.get_logger(__name__)

SQL_ROOT = PROJECT_ROOT / "infra" / "sql"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PARAM_RE = re.compile(r"\{\{(\w+)\}\}")
_LOCK_KEY = 0x7469636B  # "tick": serialises concurrent `tickflow migrate` runs on one database
MIN_TIMESCALE = (2, 13)  # create_hypertable(..., by_range(...)) appeared in 2.13

# TimescaleDB layout and policies. Trades are high-volume: small chunks, compressed after a week,
# dropped after 90 days (ClickHouse keeps the full archive). Candles are small and kept forever;
# compression waits a month so revisions and replays land on row-store chunks.
TIMESCALE_PARAMS: dict[str, str] = {
    "trades_chunk_interval": "1 day",
    "candles_chunk_interval": "7 days",
    "trades_compress_after": "7 days",
    "candles_compress_after": "30 days",
    "trades_retention": "90 days",
    "cagg_refresh_every": "15 minutes",
    "onchain_chunk_interval": "365 days",
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


def _ch_applied(client: Any) -> set[str]:
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version String, name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
    )
    return {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}


def migrate_clickhouse(client: Any, *, root: Path = SQL_ROOT) -> list[str]:
    """Apply pending ClickHouse migrations through a clickhouse-connect client; return their versions."""
    applied = _ch_applied(client)
    done = []
    for mig in discover("clickhouse", root=root):
        if mig.version in applied:
            continue
        for stmt in mig.statements(backslash_escapes=True):
            client.command(stmt)
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


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def timescale_version(conn: psycopg.Connection[Any]) -> str | None:
    """Make TimescaleDB usable if the server offers it; return its version, or None for plain mode.

    Offered means listed in ``pg_available_extensions``. Creating it can still fail (not in
    ``shared_preload_libraries``, no privilege); that, or a version older than MIN_TIMESCALE, falls
    back to plain PostgreSQL with a warning rather than failing the migration.
    """
    row = conn.execute("SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    if row is None:
        return None
    if row[1] is None:
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error as exc:
            log.warning("timescaledb offered but not usable; using plain PostgreSQL", error=str(exc).strip())
            return None
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]  # type: ignore[index]
    if _version_tuple(version) < MIN_TIMESCALE:
        log.warning("timescaledb too old; using plain PostgreSQL", version=version, minimum=".".join(map(str, MIN_TIMESCALE)))
        return None
    return str(version)


def migrate_postgres(conninfo: str, *, timescale: bool | None = None, root: Path = SQL_ROOT) -> list[str]:
    """Apply pending PostgreSQL migrations; return the versions applied now.

    ``timescale``: None detects the extension, False forces plain PostgreSQL, True requires it.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            return _migrate_postgres(conn, timescale, root)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _migrate_postgres(conn: psycopg.Connection[Any], timescale: bool | None, root: Path) -> list[str]:
    conn.execute(_PG_TABLE)
    ts_version = None if timescale is False else timescale_version(conn)
    if timescale and ts_version is None:
        raise RuntimeError("TimescaleDB was required but is not available on this server")
    log.info("postgres migrations", timescaledb=ts_version or "absent")
    recorded = dict(conn.execute("SELECT version, variant FROM schema_migrations").fetchall())
    done = []
    for mig in discover("postgres", timescale=ts_version is not None, root=root):
        if recorded.get(mig.version, "skipped") != "skipped":
            continue
        if mig.path is None:
            if mig.version not in recorded:
                conn.execute("INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, 'skipped')", (mig.version, mig.name))
                log.info("migration skipped until timescaledb is available", version=mig.version, name=mig.name)
            continue
        variant = "timescaledb" if mig.timescale else "postgres"
        with conn.transaction():
            for stmt in mig.statements(TIMESCALE_PARAMS):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, %s) "
                "ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, variant = EXCLUDED.variant, applied_at = now()",
                (mig.version, mig.name, variant),
            )
        log.info("migration applied", store="postgres", version=mig.version, name=mig.name, variant=variant)
        done.append(mig.version)
    return done
