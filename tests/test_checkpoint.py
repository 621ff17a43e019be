"""Checkpoint records: (next offset per input topic, snapshot bytes), and the first format still restoring."""

from __future__ import annotations

import zlib

import orjson
import pytest

from streams.checkpoint import CheckpointStore, decode_checkpoint, encode_checkpoint
from streams.settings import Settings


def test_a_checkpoint_round_trips_with_any_snapshot_bytes() -> None:
    snapshot = orjson.dumps({"symbols": [{"ids": ["1", "2"]}]}) + b"\n\x00\xff"  # bytes, newlines included
    assert decode_checkpoint(encode_checkpoint({"ticks": 42, "other": 7}, snapshot), ["ticks"]) == ({"ticks": 42, "other": 7}, snapshot)


def test_a_first_format_checkpoint_restores_on_its_single_input() -> None:
    old = zlib.compress(orjson.dumps({"offset": 42, "state": {"version": 2, "symbols": []}}), 1)
    offsets, snapshot = decode_checkpoint(old, ["ticks"])
    assert offsets == {"ticks": 42} and orjson.loads(snapshot) == {"version": 2, "symbols": []}
    indicators = zlib.compress(orjson.dumps({"offset": 9, "state": {"input": "candles-x", "engine": {}}}), 1)
    assert decode_checkpoint(indicators, ["candles"])[0] == {"candles-x": 9}  # its own topic, which the runtime then checks


def test_a_damaged_checkpoint_is_detected() -> None:
    data = bytearray(encode_checkpoint({"ticks": 1}, b"state" * 100))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(zlib.error):
        decode_checkpoint(bytes(data), ["ticks"])


@pytest.mark.integration
def test_the_newest_checkpoint_of_each_partition_is_read_with_one_consumer(topics: Settings) -> None:
    from confluent_kafka import Producer

    topic = topics.kafka.topic_candles_state
    producer = Producer({"bootstrap.servers": topics.kafka.bootstrap, "linger.ms": 5})
    for n in range(3):  # partitions 0 and 2 get three checkpoints each, in batches; 1 and 3 none
        for p in (0, 2):
            producer.produce(topic, encode_checkpoint({"ticks": 10 * p + n}, b"state"), key=str(p), partition=p)
    producer.flush()
    store = CheckpointStore(topics, topic, ["ticks"])
    newest = store.newest([0, 1, 2, 3])
    assert sorted(newest) == [0, 2]
    assert {p: store.decode(p, data)[0] for p, data in newest.items()} == {0: {"ticks": 2}, 2: {"ticks": 22}}
    assert store.newest([]) == {}
