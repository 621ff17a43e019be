"""Avro encoding in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, body.

Schema ids come from a Confluent-compatible Schema Registry when one is configured (the schema is
registered under ``<topic>-value`` at start, through confluent-kafka's ``SchemaRegistryClient``) and
otherwise from ``LOCAL_IDS``, a fixed table that
never reuses an id. Readers resolve the writer's schema by id and read into their own schema, which
is how Avro schema evolution works: new fields must be optional with a default.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.registry import LOCAL_IDS  # fixed ids for running without a Schema Registry

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = 0
_HEADER = struct.Struct(">bI")


class DecodeError(ValueError):
    """A record that is not a valid tickflow Avro message; the message says why."""


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """The expanded JSON schema of record ``name`` (e.g. ``tickflow.TradeBatch``)."""
    path = SCHEMA_DIR / f"{name}.avsc"
    if not path.exists():
        path = SCHEMA_DIR / "history" / f"{name}.avsc"
    return fastavro.schema.load_schema(str(path), _write_hint=False)


def _strip_logical(schema: Any) -> Any:
    """Drop logicalType annotations: times stay integers, which is several times faster to read."""
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(s) for s in schema]
    return schema


def parse(schema: dict[str, Any]) -> Any:
    return fastavro.parse_schema(_strip_logical(copy.deepcopy(schema)))


@lru_cache
def registry_client(url: str) -> SchemaRegistryClient:
    """One confluent-kafka Schema Registry client per URL (it caches schemas by id and subject)."""
    return SchemaRegistryClient({"url": url})


def register(registry: SchemaRegistryClient, subject: str, schema: dict[str, Any]) -> int:
    """The id of ``schema`` under ``subject``: registered if new, the existing id if unchanged."""
    return registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))


def fetch(registry: SchemaRegistryClient, schema_id: int) -> dict[str, Any]:
    """The Avro schema with ``schema_id``. An id the registry does not have, or a schema that is not
    Avro, is the record's fault (DecodeError); an unreachable registry raises as it is."""
    try:
        found = registry.get_schema(schema_id)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            raise DecodeError(f"schema id {schema_id} not in registry") from exc
        raise
    if (found.schema_type or "AVRO") != "AVRO":
        raise DecodeError(f"schema id {schema_id} is not an Avro schema: a {found.schema_type} schema")
    try:
        return json.loads(found.schema_str)
    except ValueError as exc:
        raise DecodeError(f"schema id {schema_id} is not an Avro schema: {exc}") from exc


def codec_for(name: str, topic: str, registry_url: str | None) -> AvroCodec:
    """The codec every producer and agent uses for ``topic``: schemas registered under
    ``<topic>-value`` and writer ids resolved through the registry when ``registry_url`` is set
    (one shared client per URL), else the fixed local ids."""
    return AvroCodec(name, topic=topic, registry=registry_client(registry_url) if registry_url else None)


class AvroCodec:
    """Encoder and decoder of one record type on one topic."""

    def __init__(
        self,
        name: str,
        *,
        topic: str | None = None,
        registry: SchemaRegistryClient | None = None,
        schema: dict[str, Any] | None = None,
        schema_id: int | None = None,
    ) -> None:
        self.name = name
        self.schema = schema if schema is not None else load_schema(name)
        self._registry = registry
        if schema_id is not None:
            self.schema_id = schema_id
        elif registry is not None:
            self.schema_id = register(registry, f"{topic or name}-value", self.schema)
        else:
            self.schema_id = LOCAL_IDS[name]
        self._parsed = parse(self.schema)
        self._header = _HEADER.pack(MAGIC, self.schema_id)
        self._writers: dict[int, Any] = {self.schema_id: self._parsed}
        self._local_by_id = {v: k for k, v in LOCAL_IDS.items()}

    @property
    def header(self) -> bytes:
        """The Confluent wire header this codec writes: magic byte and schema id."""
        return self._header

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()

    def _writer_schema(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            if self._registry is not None:
                schema = fetch(self._registry, schema_id)  # an unreachable registry raises: not the record's fault
                try:
                    writer = parse(schema)
                except Exception as exc:  # fastavro raises several types on schemas it cannot parse
                    raise DecodeError(f"schema id {schema_id} is not a usable Avro schema: {exc}") from exc
            elif schema_id in self._local_by_id:
                writer = parse(load_schema(self._local_by_id[schema_id]))
            else:
                raise DecodeError(f"unknown schema id {schema_id}")
            self._writers[schema_id] = writer
        return writer

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data or len(data) < _HEADER.size:
            raise DecodeError("record shorter than the 5-byte Avro header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"bad magic byte {magic}, not Confluent Avro")
        writer = self._writer_schema(schema_id)
        buf = io.BytesIO(data)
        buf.seek(_HEADER.size)
        try:
            if writer is self._parsed:
                record = fastavro.schemaless_reader(buf, writer, None)
            else:
                record = fastavro.schemaless_reader(buf, writer, self._parsed)
        except Exception as exc:  # fastavro raises many types on corrupt bodies
            raise DecodeError(f"undecodable Avro body: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the Avro body")
        return record
