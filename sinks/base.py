"""The sink contract: a store that durably and idempotently writes one decoded batch at a time.

Like Quix Streams' ``add``/``flush`` pair, reduced to one call: the runner accumulates records and
hands the store a whole :class:`SinkBatch`; ``write`` returns only once the rows are durable and
raises otherwise, so the runner commits Kafka offsets only after a successful write. Writes must be
idempotent (keyed upserts or replacing engines) because at-least-once delivery replays records after
a crash or rebalance.

Two kinds of failure are told apart: :class:`DataRejected` (this data can never be stored: the
runner bisects the batch, dead-letters the culprit records and writes the rest) and anything else
(the store is down or unhappy: the runner retries the same batch until it succeeds).

Sinks name no record type: they read the registry (``schemas.registry``). The analytic stores take
every type with a ``table``, whose rows are :func:`layout_of`'s columns (the model's dataclass fields,
typed by its Avro schema); the Redis sink takes every type with a ``channel``. A new record type
needs no code here, only its table migrations. The one exception is declared below:
:data:`FLATTENED` (a trade batch is many ``trades`` rows).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from itertools import repeat
from operator import attrgetter
from typing import Any, ClassVar

from schemas import codec
from schemas.registry import RECORDS, RecordType, record_type, topic_of
from schemas.models import TradeBatch
from streams.settings import Settings

# ClickHouse DateTime64 covers 1900-01-01 .. 2299-12-31 and silently wraps values outside it (a
# wrapped value then breaks every reader of the table), so both analytic stores reject such rows.
MIN_TIME_MS = -2_208_988_800_000
MAX_TIME_MS = 10_413_791_999_999
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
# A version column: an Avro int fits PostgreSQL integer and a ClickHouse UInt32 version column.
MAX_VERSION = {"int": MAX_INT32, "long": MAX_INT64}


class DataRejected(Exception):
    """The store can never accept this data (a value out of range, an invalid string, ...)."""


class SinkBatch:
    """What one write carries: decoded records grouped by registry name (``"candle"``), in Kafka
    order within each partition. ``SinkBatch(candle=[...], trade_batch=[...])`` names them."""

    __slots__ = ("records",)

    def __init__(self, records: dict[str, list[Any]] | None = None, /, **by_name: list[Any]) -> None:
        self.records: dict[str, list[Any]] = records if records is not None else {}
        for name, items in by_name.items():
            record_type(name)  # KeyError naming the known types
            self.records[name] = list(items)

    @classmethod
    def of_model(cls, rt: RecordType, record: Any) -> SinkBatch:
        """One model of type ``rt`` as a batch (a carrier gives the records it carries)."""
        carried = CARRIERS.get(rt.name)
        if carried is not None:
            return cls({carried[0]: carried[1](record)})
        return cls({rt.name: [record]})

    def of(self, name: str) -> list[Any]:
        return self.records.get(name, [])

    def __len__(self) -> int:
        """Rows: a flattened record counts the rows it becomes."""
        n = 0
        for name, items in self.records.items():
            flat = FLATTENED.get(name)
            n += sum(map(flat.rows, items)) if flat is not None else len(items)
        return n

    def extend(self, other: SinkBatch) -> None:
        for name, items in other.records.items():
            mine = self.records.get(name)
            if mine is None:
                self.records[name] = list(items)
            else:
                mine.extend(items)

    @classmethod
    def merge(cls, parts: Iterable[SinkBatch]) -> SinkBatch:
        batch = cls()
        for part in parts:
            batch.extend(part)
        return batch


class Sink(abc.ABC):
    """One store. ``record_types`` names the registry types it takes; their topics follow."""

    name: ClassVar[str]
    batch_ms_setting: ClassVar[str] = "sink_batch_ms"  # Settings field: longest the runner holds a partial batch

    @classmethod
    @abc.abstractmethod
    def record_types(cls, settings: Settings) -> tuple[str, ...]:
        """Registry names of the record types this sink consumes under ``settings``."""

    @classmethod
    def topics_for(cls, settings: Settings) -> tuple[str, ...]:
        """The physical topics this sink consumes under ``settings``, as :meth:`record_types` orders them."""
        return tuple(topic_of(settings, name) for name in cls.record_types(settings))

    @classmethod
    def realtime(cls, settings: Settings) -> bool:
        """On the realtime path: it carries realtime records (in-progress candles), which subscribers wait for."""
        return any(record_type(name).realtime for name in cls.record_types(settings))

    @abc.abstractmethod
    def write(self, batch: SinkBatch) -> None:
        """Store the batch idempotently; return only when durable; raise on failure.
        Record types of the batch that this sink does not take are not its business."""

    @abc.abstractmethod
    def close(self) -> None: ...


def stored_types() -> tuple[str, ...]:
    """Every record type with a table: what the analytic stores take."""
    return tuple(rt.name for rt in RECORDS.values() if rt.table)


# -- columns


@dataclass(frozen=True, slots=True)
class Column:
    """One table column, typed by the Avro schema of its field."""

    name: str
    kind: str  # Avro primitive: string (enums too), bytes, int, long, float, double, boolean
    nullable: bool = False
    per_ms: int = 0  # a time: 1 for milliseconds, 1000 for microseconds since the epoch; 0 otherwise


_TIME_UNITS = {"timestamp-millis": 1, "timestamp-micros": 1000}
_PRIMITIVES = frozenset({"string", "bytes", "int", "long", "float", "double", "boolean"})


def _column(name: str, avro_type: Any) -> Column | None:
    """The column of an Avro field, or None for a nested type (array, map, record, fixed)."""
    nullable = False
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        if len(rest) != 1:
            return None
        nullable, avro_type = len(rest) < len(avro_type), rest[0]
    per_ms = 0
    if isinstance(avro_type, dict):
        per_ms = _TIME_UNITS.get(avro_type.get("logicalType", ""), 0)
        avro_type = "string" if avro_type.get("type") == "enum" else avro_type.get("type")
    if avro_type not in _PRIMITIVES:
        return None
    return Column(name, avro_type, nullable, per_ms)


def avro_columns(schema: str) -> dict[str, Column | None]:
    """The fields of Avro record ``schema`` (``tickflow.Candle``) as columns, None where nested."""
    return {f["name"]: _column(f["name"], f["type"]) for f in codec.load_schema(schema)["fields"]}


@dataclass(frozen=True, slots=True)
class TableLayout:
    """How records of one type become rows of its table, the same in ClickHouse and PostgreSQL."""

    record_type: RecordType
    columns: tuple[Column, ...]
    to_columns: Callable[[list[Any]], dict[str, list[Any]]]  # column lists named like the table's; DataRejected if unstorable

    @property
    def table(self) -> str:
        return self.record_type.table  # type: ignore[return-value]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def unique_key(self) -> tuple[str, ...]:
        """The key of a row in PostgreSQL: ``table_key`` plus the time column, which TimescaleDB
        requires in every unique index (ClickHouse orders by ``table_key`` alone)."""
        rt = self.record_type
        return rt.table_key if rt.time_column is None or rt.time_column in rt.table_key else (*rt.table_key, rt.time_column)


@dataclass(frozen=True, slots=True)
class Flattening:
    """A record type whose table rows are not its model's fields one to one."""

    columns: Callable[[], tuple[Column, ...]]
    to_columns: Callable[[list[Any]], dict[str, list[Any]]]
    rows: Callable[[Any], int]  # rows one record becomes


def _trade_table_columns() -> tuple[Column, ...]:
    """``trades``: the batch's exchange and symbol, then each trade's fields (ts in µs)."""
    batch, trade = avro_columns("tickflow.TradeBatch"), avro_columns("tickflow.Trade")
    return (batch["exchange"], batch["symbol"], *trade.values())  # type: ignore[return-value]


def _check_times(what: str, values: list[int], per_ms: int) -> None:
    if values:
        for bound in (min(values), max(values)):
            if not MIN_TIME_MS <= bound // per_ms <= MAX_TIME_MS:
                raise DataRejected(f"{what} {bound} is outside the storable range 1900-01-01..2299-12-31")


def _check_text(what: str, values: list[str | None]) -> None:
    if "\x00" in "".join(v for v in values if v is not None):
        raise DataRejected(f"{what} contains a NUL character")


def _check_ints(what: str, values: list[int], low: int, high: int) -> None:
    if values and (min(values) < low or max(values) > high):
        raise DataRejected(f"{what} outside {low}..{high}")


def trade_columns(batches: list[TradeBatch]) -> dict[str, list[Any]]:
    """The trades as columns named like the tables' (ts in µs), or DataRejected if unstorable.

    Built a batch at a time (``zip`` over its trades): per trade, this was most of a store sink's CPU.
    """
    cols: dict[str, list[Any]] = {"exchange": [], "symbol": [], "trade_id": [], "ts": [], "price": [], "amount": [], "side": []}
    exchange, symbol, trade_id, ts, price, amount, side = cols.values()
    for batch in batches:
        n = len(batch.trades)
        if n:
            exchange.extend(repeat(batch.exchange, n))
            symbol.extend(repeat(batch.symbol, n))
            ids, times, prices, amounts, sides = zip(*batch.trades, strict=True)
            trade_id.extend(ids)
            ts.extend(times)
            price.extend(prices)
            amount.extend(amounts)
            side.extend(sides)
    _check_times("trade ts (µs)", ts, 1000)
    for name in ("exchange", "symbol", "trade_id", "side"):
        _check_text(f"trade {name}", cols[name])
    return cols


# Declared once: record types whose rows are not their model's fields. Everything else is generic.
FLATTENED: dict[str, Flattening] = {
    "trade_batch": Flattening(_trade_table_columns, trade_columns, lambda b: len(b.trades)),
}

# Record types that carry records of another type (a sink receives those): a symbol's forming
# candles of every interval in one ``candles-live`` record.
CARRIERS: dict[str, tuple[str, Callable[[Any], list[Any]]]] = {
    "live_candles": ("candle", attrgetter("candles")),
}


def _generic_columns(rt: RecordType, columns: tuple[Column, ...]) -> Callable[[list[Any]], dict[str, list[Any]]]:
    """Rows of ``rt`` straight from its model's fields, validated for both stores.

    A type with an ``is_final`` field keeps only final records: in-progress ones are realtime state
    (Redis) superseded within seconds, and storing them would add rows that exist to be replaced.
    """
    names = tuple(c.name for c in columns)
    values = attrgetter(*names) if len(names) > 1 else (lambda r: (getattr(r, names[0]),))
    final_only = "is_final" in names
    times = [(c.name, c.per_ms, c.nullable, f"{rt.name} {c.name} ({'ms' if c.per_ms == 1 else 'µs'})") for c in columns if c.per_ms]
    texts = [c.name for c in columns if c.kind == "string"]
    ints = []
    for c in columns:
        if c.kind in ("int", "long") and not c.per_ms:
            if c.name == rt.version:
                ints.append((c.name, c.nullable, 0, MAX_VERSION[c.kind]))
            else:
                bound = MAX_INT32 if c.kind == "int" else MAX_INT64
                ints.append((c.name, c.nullable, -bound - 1, bound))

    def to_columns(records: list[Any]) -> dict[str, list[Any]]:
        if final_only:
            records = [r for r in records if r.is_final]
        if not records:
            return {n: [] for n in names}
        cols = dict(zip(names, map(list, zip(*map(values, records), strict=True)), strict=True))
        for name, per_ms, nullable, what in times:
            col = cols[name]
            _check_times(what, [v for v in col if v is not None] if nullable else col, per_ms)
        for name, nullable, low, high in ints:
            col = cols[name]
            _check_ints(f"{rt.name} {name}", [v for v in col if v is not None] if nullable else col, low, high)
        for name in texts:
            _check_text(f"{rt.name} {name}", cols[name])
        return cols

    return to_columns


def _layout(rt: RecordType) -> TableLayout:
    flat = FLATTENED.get(rt.name)
    if flat is not None:
        layout = TableLayout(rt, flat.columns(), flat.to_columns)
    else:
        if not is_dataclass(rt.model):
            raise TypeError(f"record type {rt.name}: its model {rt.model.__name__} is not a dataclass, so it has no columns")
        avro = avro_columns(rt.schema)
        columns = []
        for f in fields(rt.model):
            col = avro.get(f.name)
            if col is None:
                raise TypeError(
                    f"record type {rt.name}: field {f.name!r} is not a flat Avro field of {rt.schema}, so it cannot be a column "
                    "of its table; declare its rows in sinks.base.FLATTENED"
                )
            columns.append(col)
        layout = TableLayout(rt, tuple(columns), _generic_columns(rt, tuple(columns)))
    names = set(layout.names)
    declared = [*rt.table_key, *(c for c in (rt.version, rt.time_column) if c)]
    if not rt.table_key or not names.issuperset(declared):
        raise TypeError(f"record type {rt.name}: table_key, version and time_column must name its columns {sorted(names)}, got {declared}")
    return layout


_LAYOUTS: dict[str, TableLayout] = {}


def layout_of(name: str) -> TableLayout | None:
    """The table layout of registry type ``name``, or None when it has no table."""
    rt = record_type(name)
    if rt.table is None:
        return None
    layout = _LAYOUTS.get(name)
    if layout is None or layout.record_type is not rt:  # a type registered anew (tests) gets a new layout
        layout = _LAYOUTS[name] = _layout(rt)
    return layout


def columns_of(name: str) -> tuple[str, ...]:
    """Column names of the table of registry type ``name``, in order."""
    layout = layout_of(name)
    if layout is None:
        raise KeyError(f"record type {name!r} has no table")
    return layout.names
