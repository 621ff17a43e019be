"""TimescaleDB mode of the PostgreSQL store: read the catalog, decide, say why.

``TIMESCALE`` is explicit: ``off`` never touches the extension; ``on`` requires it and fails with
what to do when the server cannot give it; ``auto`` (the default) uses it on a fresh database only
when the server is set up for it (extension created, or library preloaded), and otherwise keeps a
database in the mode it was migrated in: a plain database is converted only with ``on``.

The decision (:func:`decide`) is pure over :class:`CatalogFacts`, which :func:`read_facts` fills
from a handful of catalog queries; ``tickflow migrate`` prints :attr:`Plan.report`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["auto", "on", "off"]
MIN_TIMESCALE = (2, 13)  # create_hypertable(..., by_range(...)) appeared in 2.13
# The TimescaleDB loader defines these settings in every backend when it is preloaded.
LOADER_SETTINGS = ("timescaledb.disable_load", "timescaledb.max_background_workers")
_HYPERTABLE_RE = re.compile(r"create_hypertable\(\s*'(\w+)'\s*,\s*by_range\(\s*'(\w+)'", re.I)


class TimescaleError(RuntimeError):
    """The requested mode cannot be had on this server or database; the message says what to do."""


@dataclass(frozen=True)
class TableFacts:
    """A plain table a TimescaleDB migration would turn into a hypertable."""

    name: str
    time_column: str
    rows: int  # planner estimate
    unique_without_time: tuple[str, ...] = ()  # unique indexes lacking the time column: TimescaleDB refuses them
    referenced_by: tuple[str, ...] = ()  # foreign keys pointing at the table: unsupported on hypertables


@dataclass(frozen=True)
class CatalogFacts:
    available_version: str | None  # pg_available_extensions.default_version; None: not installed on the server
    installed_version: str | None  # extension created in this database
    preloaded: bool
    preload_setting: str | None  # shared_preload_libraries, None when this role may not read it
    recorded: dict[str, str] = field(default_factory=dict)  # schema_migrations: version -> variant
    plain_tables: tuple[TableFacts, ...] = ()  # existing tables the pending TimescaleDB files would convert


@dataclass(frozen=True)
class Plan:
    timescale: bool
    create_extension: bool
    convert: tuple[str, ...]  # plain tables converted with their rows (migrate_data => true)
    report: str


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def hypertables_in(sql: str) -> list[tuple[str, str]]:
    """(table, time column) of every ``create_hypertable('t', by_range('col' ...`` in a script."""
    return _HYPERTABLE_RE.findall(sql)


def preload_instruction(current: str | None) -> str:
    libs = [x.strip().strip('"') for x in (current or "").split(",") if x.strip()]
    wanted = ",".join(dict.fromkeys([*libs, "timescaledb"]))
    shown = "not readable by this role" if current is None else f"'{current}'"
    return (
        f"the timescaledb library is not preloaded (shared_preload_libraries is {shown}). Set "
        f"shared_preload_libraries = '{wanted}' in postgresql.conf, or run "
        f"ALTER SYSTEM SET shared_preload_libraries = '{wanted}'; as a superuser, restart PostgreSQL, "
        "then run `tickflow migrate` again"
    )


def database_mode(recorded: dict[str, str]) -> str | None:
    """The mode a database was migrated in: timescaledb, postgres, or None when never migrated."""
    if not recorded:
        return None
    return "timescaledb" if "timescaledb" in recorded.values() else "postgres"


def _requirements(facts: CatalogFacts, why: str) -> None:
    """Raise with instructions unless the server can run TimescaleDB now."""
    minimum = ".".join(map(str, MIN_TIMESCALE))
    if facts.available_version is None and facts.installed_version is None:
        raise TimescaleError(
            f"{why}, but this PostgreSQL server has no timescaledb extension: install TimescaleDB >= {minimum} "
            "for this PostgreSQL version (package timescaledb-2-postgresql-<major>, or the timescale/timescaledb image), "
            "or set TIMESCALE=off"
        )
    if not facts.preloaded:
        raise TimescaleError(f"{why}, but {preload_instruction(facts.preload_setting)}; or set TIMESCALE=off")
    version = facts.installed_version or facts.available_version
    if version_tuple(version) < MIN_TIMESCALE:  # type: ignore[arg-type]
        step = "ALTER EXTENSION timescaledb UPDATE; (first statement of a new session)" if facts.installed_version else f"install TimescaleDB >= {minimum}"
        raise TimescaleError(f"{why}, but TimescaleDB {version} is older than {minimum}: {step}, or set TIMESCALE=off")


def _conversion(facts: CatalogFacts) -> tuple[str, ...]:
    """The plain tables to convert, or TimescaleError saying why they cannot be and what to do."""
    problems = []
    for t in facts.plain_tables:
        for index in t.unique_without_time:
            problems.append(f"{t.name}: unique index {index} lacks the time column {t.time_column}: drop it or add {t.time_column} to it")
        for fk in t.referenced_by:
            problems.append(f"{t.name}: foreign key {fk} references it (hypertables cannot be referenced): drop that constraint")
    if problems:
        raise TimescaleError(
            "TIMESCALE=on would convert this plain-PostgreSQL database, but nothing was changed: "
            + "; ".join(problems)
            + ". Fix these, or keep TIMESCALE=off/auto, or load the data into a fresh TimescaleDB database by replaying the trade log"
        )
    return tuple(t.name for t in facts.plain_tables)


def decide(mode: Mode, facts: CatalogFacts) -> Plan:
    """The mode this migration runs in, or TimescaleError with what to set instead (pure)."""
    current = database_mode(facts.recorded)
    if mode == "off":
        note = " (hypertables made earlier stay hypertables; new migrations use their plain files)" if current == "timescaledb" else ""
        return Plan(False, False, (), f"TIMESCALE=off: plain PostgreSQL{note}")
    if mode == "on" or current == "timescaledb":
        why = "TIMESCALE=on" if mode == "on" else "TIMESCALE=auto and this database was migrated in TimescaleDB mode"
        _requirements(facts, why)
        convert = _conversion(facts) if current == "postgres" else ()
        version = facts.installed_version or facts.available_version
        what = f"TimescaleDB {version} ({why})"
        if convert:
            rows = sum(t.rows for t in facts.plain_tables)
            what += f"; converting plain tables {', '.join(convert)} to hypertables with their ~{rows:,} rows, in one transaction"
        return Plan(True, facts.installed_version is None, convert, what)
    # auto, fresh or plain database
    usable = (facts.installed_version is not None or facts.available_version is not None) and facts.preloaded
    if current == "postgres":
        hint = "; TIMESCALE=on converts it (see README, TimescaleDB)" if usable else ""
        return Plan(False, False, (), f"TIMESCALE=auto: plain PostgreSQL, the mode this database was migrated in{hint}")
    if usable:
        try:
            _requirements(facts, "TIMESCALE=auto")
        except TimescaleError as exc:
            return Plan(False, False, (), f"TIMESCALE=auto: plain PostgreSQL ({exc})")
        version = facts.installed_version or facts.available_version
        return Plan(True, facts.installed_version is None, (), f"TIMESCALE=auto: TimescaleDB {version}, which this server preloads")
    if facts.available_version is not None:
        return Plan(False, False, (), f"TIMESCALE=auto: plain PostgreSQL; to use TimescaleDB, {preload_instruction(facts.preload_setting)} with TIMESCALE=on")
    return Plan(False, False, (), "TIMESCALE=auto: plain PostgreSQL (no timescaledb extension on this server)")


Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def read_facts(query: Query, recorded: dict[str, str], candidates: list[tuple[str, str]]) -> CatalogFacts:
    """Catalog facts through ``query(sql, params) -> rows``. ``candidates`` are the (table, time
    column) pairs the TimescaleDB migrations make hypertables; those that exist as plain tables are
    checked for what would stop a conversion."""
    row = query("SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'", ())
    available, installed = row[0] if row else (None, None)
    settings = dict(query("SELECT name, setting FROM pg_settings WHERE name = 'shared_preload_libraries' OR name = ANY(%s)", (list(LOADER_SETTINGS),)))
    preload = settings.get("shared_preload_libraries")
    listed = "timescaledb" in [x.strip().strip('"') for x in (preload or "").split(",")]
    preloaded = listed or any(name in settings for name in LOADER_SETTINGS)
    hyper: set[str] = set()
    if installed is not None:
        hyper = {r[0] for r in query("SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_schema = current_schema()", ())}
    plain = []
    for table, column in candidates:
        if table in hyper:
            continue
        found = query("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s) AND relkind = 'r'", (table,))
        if not found:
            continue
        unique = query(
            "SELECT i.indexrelid::regclass::text FROM pg_index i WHERE i.indrelid = to_regclass(%s) AND i.indisunique "
            "AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) AND a.attname = %s) "
            "ORDER BY 1",
            (table, column),
        )
        refs = query("SELECT conname || ' on ' || conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND confrelid = to_regclass(%s) ORDER BY 1", (table,))
        plain.append(TableFacts(table, column, max(int(found[0][0]), 0), tuple(r[0] for r in unique), tuple(r[0] for r in refs)))
    return CatalogFacts(available, installed, preloaded, preload, dict(recorded), tuple(plain))


# Opt-in policies, applied after the migrations of a TimescaleDB-mode run so they always match the
# settings. Compression: (segmentby, orderby, compress after); only tables listed here get it.
COMPRESSION: dict[str, tuple[str, str, str]] = {
    "trades": ("exchange, symbol", "ts, trade_id", "7 days"),
    "candles": ('exchange, symbol, "interval"', "open_time", "30 days"),
    "technical_metrics": ('exchange, symbol, "interval"', "open_time", "30 days"),
}
RETENTION_TABLES = ("trades",)  # TIMESCALE_TRADES_RETENTION applies to these


def policy_statements(
    hypertables: set[str], compressed: set[str], *, compression: bool, retention: str | None
) -> list[tuple[str, tuple[Any, ...]]]:
    """SQL that makes the compression and retention policies match the settings (pure).

    ``compressed``: hypertables whose compression is already enabled (their settings stay, as
    TimescaleDB will not change them once chunks are compressed). Turning a policy off removes the
    job; chunks already compressed or dropped stay so.
    """
    out: list[tuple[str, tuple[Any, ...]]] = []
    for table, (segment_by, order_by, after) in COMPRESSION.items():
        if table not in hypertables:
            continue
        if compression:
            if table not in compressed:
                out.append((
                    f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment_by.replace(chr(39), chr(39) * 2)}', "
                    f"timescaledb.compress_orderby = '{order_by}')",
                    (),
                ))
            out.append(("SELECT add_compression_policy(%s::regclass, compress_after => %s::interval, if_not_exists => true)", (table, after)))
        else:
            out.append(("SELECT remove_compression_policy(%s::regclass, if_exists => true)", (table,)))
    for table in RETENTION_TABLES:
        if table not in hypertables:
            continue
        out.append(("SELECT remove_retention_policy(%s::regclass, if_exists => true)", (table,)))
        if retention:
            out.append(("SELECT add_retention_policy(%s::regclass, drop_after => %s::interval, if_not_exists => true)", (table, retention)))
    return out
