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

A record type whose table no migration creates gets a generated table (:mod:`sinks.ddl`) after
the files, on every run (``IF NOT EXISTS``): adding a record type needs no SQL file.

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

from sinks.ddl import clickhouse_table, postgres_table, timescale_hypertable
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
    "onchain_chunk_interval": "365 days",
    "generated_chunk_interval": "30 days",  # hypertables of generated tables (sinks.ddl)
}
_CREATE_RE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[`\"]?(\w+)", re.I)


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


def generated_layouts(store: str, root: Path = SQL_ROOT) -> list[Any]:
    """Layouts of the registry tables that no migration file of ``store`` creates (both PostgreSQL flavours count)."""
    folders = [root / store] + ([root / store / "timescale"] if store == "postgres" else [])
    declared = {name.lower() for folder in folders for path in _files(folder).values() for name in _CREATE_RE.findall(path.read_text())}
    return [layout for layout in _layouts() if layout.table.lower() not in declared]


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
    existing = {row[0] for row in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}
    for layout in generated_layouts("clickhouse", root):
        if layout.table not in existing:
            client.command(adapt(clickhouse_table(layout)))
            log.info("table generated from the record registry", store="clickhouse", table=layout.table, record_type=layout.record_type.name)
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
    return {"timescale": settings.stores.timescale, "compression": settings.stores.timescale_compression, "retention": settings.stores.timescale_trades_retention or None}


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
        _generate_postgres(conn, plan.timescale, root)
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


def _generate_postgres(conn: psycopg.Connection[Any], timescale: bool, root: Path) -> None:
    existing = {row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()}
    for layout in generated_layouts("postgres", root):
        if layout.table not in existing:
            conn.execute(postgres_table(layout))
            log.info("table generated from the record registry", store="postgres", table=layout.table, record_type=layout.record_type.name)
        hypertable = timescale_hypertable(layout, TIMESCALE_PARAMS["generated_chunk_interval"]) if timescale else None
        if hypertable is not None:
            conn.execute(hypertable)


# Checks: every record type with a table has it, in both stores


class SchemaMismatch(RuntimeError):
    """A record type's table is missing or differs from its layout: its migration is missing or wrong."""


# Column types that hold a field of each Avro kind (outer Nullable/LowCardinality removed in ClickHouse).
_CH_KINDS = {
    "string": re.compile(r"^(String|FixedString\(\d+\)|Enum(8|16)\(.*\))$"),
    "bytes": re.compile(r"^(String|FixedString\(\d+\))$"),
    "int": re.compile(r"^U?Int(8|16|32|64|128|256)$"),
    "long": re.compile(r"^U?Int(64|128|256)$"),
    "float": re.compile(r"^(Float32|Float64|Decimal.*)$"),
    "double": re.compile(r"^(Float64|Decimal.*)$"),
    "boolean": re.compile(r"^(Bool|UInt8)$"),
}
_PG_KINDS = {
    "string": {"text", "character varying", "character"},
    "bytes": {"bytea"},
    "int": {"integer", "bigint", "numeric"},
    "long": {"bigint", "numeric"},
    "float": {"real", "double precision", "numeric"},
    "double": {"double precision", "numeric"},
    "boolean": {"boolean"},
}
_CH_WRAPPER = re.compile(r"^(Nullable|LowCardinality)\((.*)\)$")


def _layouts() -> list[Any]:
    from schemas.registry import RECORDS
    from sinks.base import layout_of

    return [layout for name in RECORDS if (layout := layout_of(name)) is not None]


def _raise(store: str, problems: list[str]) -> None:
    if problems:
        raise SchemaMismatch(f"{store} tables do not match the record registry (is a migration missing?):\n- " + "\n- ".join(problems))


def _ch_type(declared: str) -> tuple[str, bool]:
    """The base type of a ClickHouse column type and whether it is Nullable."""
    nullable = False
    while m := _CH_WRAPPER.match(declared):
        nullable |= m.group(1) == "Nullable"
        declared = m.group(2)
    return declared, nullable


def check_clickhouse(client: Any) -> None:
    """Raise SchemaMismatch unless every registry type with a table has it in ClickHouse: a
    ReplacingMergeTree ordered by ``table_key`` with ``version`` as its version, and a column per
    field of the type's layout that can hold it (times as DateTime64 of the field's precision)."""
    columns: dict[str, dict[str, str]] = {}
    for table, name, declared in client.query("SELECT table, name, type FROM system.columns WHERE database = currentDatabase()").result_rows:
        columns.setdefault(table, {})[name] = declared
    tables = {r[0]: r[1:] for r in client.query("SELECT name, engine, engine_full, sorting_key FROM system.tables WHERE database = currentDatabase()").result_rows}
    problems = []
    for layout in _layouts():
        rt, where = layout.record_type, f"{layout.table} (record type {layout.record_type.name})"
        if layout.table not in tables:
            problems.append(f"{where}: no such table")
            continue
        engine, engine_full, sorting_key = tables[layout.table]
        if "ReplacingMergeTree" not in engine:
            problems.append(f"{where}: engine {engine}, not ReplacingMergeTree")
        else:
            m = re.search(r"ReplacingMergeTree(?:\((.*?)\))?", engine_full)
            args = [a.strip(" `'\"") for a in (m.group(1) or "").split(",")] if m else [""]
            if rt.version is not None and args[-1] != rt.version:
                problems.append(f"{where}: ReplacingMergeTree needs version column {rt.version}, has {m.group(0) if m else engine}")
        if [k.strip(" `") for k in sorting_key.split(",")] != list(rt.table_key):
            problems.append(f"{where}: ORDER BY ({sorting_key}), the registry's table_key is ({', '.join(rt.table_key)})")
        have = columns.get(layout.table, {})
        for col in layout.columns:
            if col.name not in have:
                problems.append(f"{where}: no column {col.name}")
                continue
            base, nullable = _ch_type(have[col.name])
            if col.per_ms:
                m = re.match(r"^DateTime64\((\d+)", base)
                ok = m is not None and int(m.group(1)) == (3 if col.per_ms == 1 else 6)
                wanted = f"DateTime64({3 if col.per_ms == 1 else 6}, ...)"
            else:
                ok, wanted = bool(_CH_KINDS[col.kind].match(base)), f"a type for Avro {col.kind}"
            if not ok:
                problems.append(f"{where}: column {col.name} is {have[col.name]}, needs {wanted}")
            if col.nullable and not nullable:
                problems.append(f"{where}: column {col.name} must be Nullable (the field is optional)")
    _raise("ClickHouse", problems)


_PG_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable = 'YES'
FROM information_schema.columns WHERE table_schema = current_schema()"""
_PG_UNIQUE = """
SELECT t.relname, array_agg(a.attname::text)
FROM pg_index i
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (i.indkey)
WHERE i.indisunique AND t.relnamespace = current_schema()::regnamespace
GROUP BY i.indexrelid, t.relname"""


def check_postgres(conninfo: str) -> None:
    """Raise SchemaMismatch unless every registry type with a table has it in PostgreSQL: a unique
    key on the layout's ``unique_key`` (the upsert's conflict target) and a column per field that can
    hold it (times as timestamptz)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        columns: dict[str, dict[str, tuple[str, bool]]] = {}
        for table, name, data_type, nullable in conn.execute(_PG_COLUMNS).fetchall():
            columns.setdefault(table, {})[name] = (data_type, nullable)
        unique: dict[str, list[set[str]]] = {}
        for table, cols in conn.execute(_PG_UNIQUE).fetchall():
            unique.setdefault(table, []).append(set(cols))
    problems = []
    for layout in _layouts():
        where = f"{layout.table} (record type {layout.record_type.name})"
        have = columns.get(layout.table)
        if have is None:
            problems.append(f"{where}: no such table")
            continue
        if set(layout.unique_key) not in unique.get(layout.table, []):
            problems.append(f"{where}: no primary key or unique index on ({', '.join(layout.unique_key)})")
        for col in layout.columns:
            if col.name not in have:
                problems.append(f"{where}: no column {col.name}")
                continue
            data_type, nullable = have[col.name]
            wanted = {"timestamp with time zone"} if col.per_ms else _PG_KINDS[col.kind]
            if data_type not in wanted:
                problems.append(f"{where}: column {col.name} is {data_type}, needs one of {', '.join(sorted(wanted))}")
            if col.nullable and not nullable:
                problems.append(f"{where}: column {col.name} must allow NULL (the field is optional)")
    _raise("PostgreSQL", problems)
