"""The query API's datasets, parameter checks and SQL, without I/O.

Each endpoint of ``/api/v1`` reads one stored record type, found in :mod:`schemas.registry` by its
table; columns are the model's fields (the sinks store them under the same names in ClickHouse and
PostgreSQL), the time range applies to the record type's ``time_column`` (milliseconds, as in the
models and the Redis messages). A dataset whose record type is not registered yet (on-chain,
sentiment, signals before their agents land) is reported as unavailable, not guessed at.

Rows come newest first from the store and are returned oldest first: ``limit`` keeps the latest
rows of the range, which is what a chart opening on a symbol wants.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.intervals import interval_ms

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 500
_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/_.\-]{0,63}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Dataset:
    endpoint: str
    table: str
    required: tuple[str, ...]  # filter parameters a request must give
    optional: tuple[str, ...] = ("exchange",)


DATASETS: dict[str, Dataset] = {
    d.endpoint: d
    for d in (
        Dataset("candles", "candles", ("symbol", "interval")),
        Dataset("indicators", "technical_metrics", ("symbol", "interval")),
        Dataset("onchain", "onchain_metrics", ("asset",), ("source",)),
        Dataset("sentiment", "sentiment_aggregates", ("asset",), ("source",)),
        Dataset("signals", "signals", ("symbol",), ("exchange", "interval", "strategy")),
    )
}


class QueryError(ValueError):
    """A bad request parameter: ``parameter`` names it, the message says what is wrong."""

    def __init__(self, parameter: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.parameter, self.status = parameter, status


class Unavailable(LookupError):
    """The dataset exists in the API but not in this deployment (no record type, or no table yet)."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a dataset lives: its table, columns in order, time column, and whether rows need FINAL."""

    table: str
    columns: tuple[str, ...]
    time_column: str
    replacing: bool


def source_of(dataset: Dataset, records: Iterable[Any]) -> Source:
    for rt in records:
        if rt.table == dataset.table and is_dataclass(rt.model) and rt.time_column:
            return Source(rt.table, tuple(f.name for f in fields(rt.model)), rt.time_column, bool(rt.table_key))
    raise Unavailable(f"{dataset.endpoint}: no record type stores table {dataset.table!r} in this deployment yet")


@dataclass(frozen=True, slots=True)
class Request:
    dataset: str
    filters: tuple[tuple[str, str], ...]  # (column, value), in the dataset's parameter order
    start: int | None
    end: int | None
    limit: int
    fmt: str

    @property
    def cache_key(self) -> str:
        """Canonical: equal requests share cache entries whatever the order of their parameters."""
        f = ",".join(f"{k}={v}" for k, v in self.filters)
        return f"{self.dataset}?{f}&start={self.start}&end={self.end}&limit={self.limit}"

    def value(self, column: str) -> str | None:
        return dict(self.filters).get(column)


def parse_time(name: str, text: str | None) -> int | None:
    """Epoch milliseconds from an integer (ms) or an ISO-8601 time (UTC unless it says otherwise)."""
    if text is None or text == "":
        return None
    if re.fullmatch(r"-?\d{1,15}", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(name, f"{name}={text!r}: give epoch milliseconds or an ISO-8601 time such as 2024-01-01T00:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def parse_request(dataset: str, params: Mapping[str, str], columns: Sequence[str]) -> Request:
    """Check the query string of ``dataset`` against the stored ``columns``; :class:`QueryError` names the bad one."""
    ds = DATASETS[dataset]
    allowed = {*ds.required, *ds.optional, "start", "end", "limit", "format"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise QueryError(unknown[0], f"unknown parameter {unknown[0]!r}; {dataset} takes {', '.join(sorted(allowed))}")
    filters = []
    for name in (*ds.required, *ds.optional):
        value = params.get(name)
        if value is None or value == "":
            if name in ds.required:
                raise QueryError(name, f"{name} is required, e.g. {dataset}?{'&'.join(f'{r}=...' for r in ds.required)}")
            continue
        if name not in columns:
            raise QueryError(name, f"{name}: the {ds.table} table has no {name} column", 400)
        if not _VALUE_RE.match(value):
            raise QueryError(name, f"{name}={value!r}: letters, digits, '/', '_', '.', '-', at most 64")
        if name == "interval":
            try:
                interval_ms(value)
            except ValueError:
                raise QueryError("interval", f"interval={value!r} is not an interval such as 1m, 5m, 1h, 1d") from None
        filters.append((name, value))
    start, end = parse_time("start", params.get("start")), parse_time("end", params.get("end"))
    if start is not None and end is not None and start >= end:
        raise QueryError("start", f"start ({start}) must be before end ({end}); the range is start <= time < end")
    limit_text = params.get("limit") or str(DEFAULT_LIMIT)
    if not re.fullmatch(r"\d{1,9}", limit_text) or int(limit_text) < 1:
        raise QueryError("limit", f"limit={limit_text!r} must be an integer from 1 to {MAX_LIMIT}")
    if int(limit_text) > MAX_LIMIT:
        raise QueryError("limit", f"limit={limit_text} is too large; at most {MAX_LIMIT} rows per request (page with start/end)")
    fmt = params.get("format") or "json"
    if fmt not in ("json", "csv"):
        raise QueryError("format", f"format={fmt!r}: json or csv")
    return Request(dataset, tuple(filters), start, end, int(limit_text), fmt)


def build_sql(src: Source, req: Request, dialect: str) -> tuple[str, dict[str, Any]]:
    """One SELECT for ``dialect`` (``postgres`` or ``clickhouse``), newest first, with its parameters."""
    q = (lambda c: f'"{c}"') if dialect == "postgres" else (lambda c: f"`{c}`")
    # PostgreSQL binds psycopg's %(name)s; ClickHouse binds server-side {name:Type} (sinks.query).
    if dialect == "postgres":
        as_time = "TIMESTAMPTZ 'epoch' + %({})s * INTERVAL '1 millisecond'"
        text = "%({})s"
    else:
        as_time = "fromUnixTimestamp64Milli({{{}:Int64}}, 'UTC')"
        text = "{{{}:String}}"
    where, params = [], {}
    for col, value in req.filters:
        where.append(f"{q(col)} = {text.format(f'f_{col}')}")
        params[f"f_{col}"] = value
    t = q(src.time_column)
    if req.start is not None:
        where.append(f"{t} >= {as_time.format('start')}")
        params["start"] = req.start
    if req.end is not None:
        where.append(f"{t} < {as_time.format('end')}")
        params["end"] = req.end
    final = " FINAL" if dialect == "clickhouse" and src.replacing else ""
    sql = f"SELECT {', '.join(map(q, src.columns))} FROM {src.table}{final}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    tie = [c for c in ("exchange",) if c in src.columns and c not in dict(req.filters)]
    sql += f" ORDER BY {t} DESC{''.join(f', {q(c)} DESC' for c in tie)} LIMIT {req.limit}"
    return sql, params


def to_ms(value: Any) -> Any:
    """Times as epoch milliseconds, as the models and Redis messages carry them; other values as they are."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MS
    return value


def rows_oldest_first(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, map(to_ms, row), strict=True)) for row in reversed(rows)]


def render(req: Request, columns: Sequence[str], records: list[dict[str, Any]]) -> tuple[bytes, str]:
    """Body and media type: JSON ``{"columns": [...], "rows": [{...}, ...]}`` or CSV with a header."""
    if req.fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([r[c] for c in columns] for r in records)
        return buf.getvalue().encode(), "text/csv; charset=utf-8"
    return orjson.dumps({"dataset": req.dataset, "columns": list(columns), "rows": records}), "application/json"
