"""The Quix Streams side of the candle benchmark: 1-minute OHLCV of the benchmark's ``ticks`` topic.

Runs in its own virtualenv (``.venv-quix``, from ``benchmarks/quix-requirements.txt``): Quix Streams
needs a confluent-kafka older than tickflow's, so the benchmark starts this file as a separate
process and reads one JSON line from its stdout. It imports nothing from tickflow: the records are
Confluent-framed Avro ``TradeBatch``es, decoded with fastavro from the schema files.

The app is what a Quix user writes for 1m candles: decode a record into its trades (``expand``),
event time from each trade, a tumbling 1-minute window per key (the record key, exchange:symbol)
aggregating open, high, low, close, volume and the trade count, closed windows emitted (``final``).
It is timed from its first record to the last offset of every partition, as the tickflow worker is.

Two things it needs on the embedded broker (Tansu): ``retention.ms`` set explicitly on its topics
(Quix copies it from the input topic to its changelog topics and fails when the broker does not
report it), and librdkafka's ``fetch.queue.backoff.ms`` low, since its 1000 ms default throttles a
consumer of many small records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
from quixstreams import Application
from quixstreams.dataframe.windows import Count, First, Last, Max, Min, Sum

HEADER = 5  # Confluent wire format: magic byte and 4-byte schema id
RETENTION_MS = str(7 * 86_400_000)


def _strip_logical(schema: Any) -> Any:
    """Times as plain longs, as tickflow's codec reads them."""
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(s) for s in schema]
    return schema


def trade_batch_reader(schema_dir: Path) -> Any:
    schema = fastavro.schema.load_schema(str(schema_dir / "tickflow.TradeBatch.avsc"), _write_hint=False)  # finds tickflow.Trade beside it
    return fastavro.parse_schema(_strip_logical(schema))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--ends", required=True, help='JSON {"partition": end offset}')
    ap.add_argument("--schemas", required=True, type=Path, help="folder of the .avsc files")
    ap.add_argument("--group", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()

    import io

    parsed = trade_batch_reader(args.schemas)
    reader = fastavro.schemaless_reader

    def trades(value: bytes, ctx: Any = None) -> list[dict[str, Any]]:
        buf = io.BytesIO(value)
        buf.seek(HEADER)
        return reader(buf, parsed, None)["trades"]

    last = {int(p): hi - 1 for p, hi in json.loads(args.ends).items() if hi > 0}
    remaining = set(last)
    marks: dict[str, float] = {}
    candles = [0]

    def first(_: bytes) -> None:
        marks.setdefault("first", time.perf_counter())

    def processed(topic: str, partition: int, offset: int) -> None:
        """After the whole dataframe ran for a record (Quix's on_message_processed)."""
        if partition in remaining and offset >= last[partition]:
            remaining.discard(partition)
            if not remaining:
                marks["last"] = time.perf_counter()
                app.stop()

    def count(_: Any) -> None:
        candles[0] += 1

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
        consumer_extra_config={"fetch.queue.backoff.ms": 1, "session.timeout.ms": 8000},
        on_message_processed=processed,
    )
    topic = app.topic(
        args.topic,
        value_deserializer="bytes",  # decoded in the first step, which is timed
        key_deserializer="str",
    )
    # Quix derives its changelog topics' retention from the input topic's as the broker reports it;
    # Tansu reports none for a topic created without one, and Quix then fails.
    topic.broker_config.extra_config.setdefault("retention.ms", RETENTION_MS)

    sdf = app.dataframe(topic)
    sdf = sdf.update(first)
    sdf = sdf.apply(trades, expand=True)
    sdf = sdf.set_timestamp(lambda trade, key, timestamp, headers: trade["ts"] // 1000)
    sdf = (
        sdf.tumbling_window(duration_ms=60_000, grace_ms=2_000)
        .agg(open=First("price"), high=Max("price"), low=Min("price"), close=Last("price"), volume=Sum("amount"), trades=Count())
        .final()
    )
    sdf = sdf.update(count)
    app.run(timeout=args.timeout)
    if "last" not in marks:
        sys.exit(f"Quix Streams did not reach the end of partitions {sorted(remaining)} within {args.timeout:.0f} s")
    print(json.dumps({"seconds": marks["last"] - marks["first"], "candles": candles[0]}))


if __name__ == "__main__":
    main()
