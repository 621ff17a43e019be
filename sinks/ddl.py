"""Table DDL generated from a record type's layout (pure): the tables of a new record type need no SQL file.

A record type with a ``table`` gets, in each store, the table its Avro schema and registry entry
describe: a column per field, typed by the field's Avro kind (times as DateTime64/timestamptz of
their precision), optional fields nullable; ClickHouse orders a ``ReplacingMergeTree(version)`` by
``table_key`` and partitions by month of ``time_column``; PostgreSQL's primary key is the layout's
``unique_key``; in TimescaleDB mode the table is a hypertable on ``time_column``. A hand-written
migration that creates the table takes precedence (tuned types such as LowCardinality, views,
compression), and :mod:`sinks.migrations` checks either against the registry the same way.
"""

from __future__ import annotations

from sinks.base import Column, TableLayout

_CH_TYPES = {"string": "String", "bytes": "String", "int": "Int32", "long": "Int64", "float": "Float32", "double": "Float64", "boolean": "Bool"}
_PG_TYPES = {"string": "text", "bytes": "bytea", "int": "integer", "long": "bigint", "float": "real", "double": "double precision", "boolean": "boolean"}


def _ch_ident(name: str) -> str:
    return f"`{name}`"


def _pg_ident(name: str) -> str:
    return f'"{name}"'


def _ch_type(col: Column) -> str:
    base = f"DateTime64({3 if col.per_ms == 1 else 6}, 'UTC')" if col.per_ms else _CH_TYPES[col.kind]
    return f"Nullable({base})" if col.nullable else base


def _pg_type(col: Column) -> str:
    base = "timestamptz" if col.per_ms else _PG_TYPES[col.kind]
    return base if col.nullable else f"{base} NOT NULL"


def clickhouse_table(layout: TableLayout) -> str:
    rt = layout.record_type
    columns = ",\n    ".join(f"{_ch_ident(c.name)} {_ch_type(c)}" for c in layout.columns)
    engine = f"ReplacingMergeTree({_ch_ident(rt.version)})" if rt.version else "ReplacingMergeTree"
    partition = f"\nPARTITION BY toYYYYMM({_ch_ident(rt.time_column)})" if rt.time_column else ""
    order = ", ".join(_ch_ident(k) for k in rt.table_key)
    return f"CREATE TABLE IF NOT EXISTS {_ch_ident(layout.table)}\n(\n    {columns}\n)\nENGINE = {engine}{partition}\nORDER BY ({order})"


def postgres_table(layout: TableLayout) -> str:
    columns = ",\n    ".join(f"{_pg_ident(c.name)} {_pg_type(c)}" for c in layout.columns)
    key = ", ".join(_pg_ident(k) for k in layout.unique_key)
    return f"CREATE TABLE IF NOT EXISTS {_pg_ident(layout.table)} (\n    {columns},\n    PRIMARY KEY ({key})\n)"


def timescale_hypertable(layout: TableLayout, chunk_interval: str) -> str | None:
    """The statement making the table a hypertable on its time column (None without one). Times
    in milliseconds or microseconds are timestamptz columns, so the range is an interval."""
    time_column = layout.record_type.time_column
    if time_column is None:
        return None
    return (
        f"SELECT create_hypertable('{_pg_ident(layout.table)}', by_range('{time_column}', INTERVAL '{chunk_interval}'), "
        "if_not_exists => TRUE, migrate_data => TRUE)"
    )
