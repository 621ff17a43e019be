"""Topic names, partition counts and their creation at start.

Derived topics share the partition count of ``ticks`` so a worker that owns ticks partition p owns
partition p of every derived topic too (co-partitioning).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agents.registry import AGENTS
from agents.spec import AgentSpec
from schemas.registry import RECORDS, topic_of
from streams.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def state_topic(settings: Settings, spec: AgentSpec) -> str:
    """An agent's checkpoints: ``{agent}-state``, or the Settings field ``topic_{agent}_state`` when there is one."""
    return getattr(settings.kafka, f"topic_{spec.name}_state", None) or f"{spec.name}-state{settings.kafka.topic_suffix}"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every record type's topic (schemas.registry) and every agent's state topic (agents.registry)."""
    n = settings.kafka.ticks_partitions
    specs = [TopicSpec(topic_of(settings, rt.name), n if rt.partitioned else 1, dict(rt.topic_config)) for rt in RECORDS.values()]
    specs += [TopicSpec(state_topic(settings, spec), n, {"cleanup.policy": "compact"}) for spec in AGENTS]
    return specs


def isolated(settings: Settings, tag: str, *, keep: Iterable[str] = ()) -> Settings:
    """``settings`` with every topic (but the ``topic_*`` fields in ``keep``) and the app id suffixed
    with ``tag``: runs sharing a broker, as tests and benchmarks do, never see each other's records
    or consumer groups, whatever topics later steps add."""
    kafka = settings.kafka
    update: dict[str, str] = {f: f"{getattr(kafka, f)}-{tag}" for f in type(kafka).model_fields if f.startswith("topic_") and f not in keep}
    update["app_id"] = f"{kafka.app_id}-{tag}"
    return settings.updated(**update)


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka.bootstrap})


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [s for s in topic_specs(settings) if s.name not in existing]
    if not missing:
        return []
    futures = client.create_topics(
        [NewTopic(s.name, s.partitions, settings.kafka.replication_factor, config=s.config) for s in missing],
        operation_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    log.info("topics created", topics=created)
    return created


def recreate_miscounted(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Delete and create again every topic whose partition count is not its spec's; return their names.

    Only for a broker that has just started empty (``tickflow broker``): clients reconnecting to a
    restarted Tansu within its first milliseconds can make a topic with its default of 4 partitions
    before :func:`ensure_topics` runs, which would break co-partitioning; nothing in it is kept.
    """
    client = admin(settings)
    counts = {name: len(meta.partitions) for name, meta in client.list_topics(timeout=timeout).topics.items()}
    wrong = [s for s in topic_specs(settings) if s.name in counts and counts[s.name] != s.partitions]
    if not wrong:
        return []
    log.warning("topics with the wrong partition count recreated", topics={s.name: f"{counts[s.name]} -> {s.partitions}" for s in wrong})
    for fut in client.delete_topics([s.name for s in wrong], operation_timeout=timeout).values():
        fut.result()
    ensure_topics(settings, timeout)
    return [s.name for s in wrong]


def high_watermarks(consumer: Consumer, partitions: list[TopicPartition], timeout: float = 10.0) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) per partition, read from fetch responses.

    Tansu answers ListOffsets with the base offset of the last record batch + 1 rather than the
    offset after the last record, so the queried high watermark undercounts. A fetch response
    carries the true one: seek one before the queried high (inside the last batch), fetch, and
    read the cached watermarks. On Apache Kafka both agree.
    """
    queried = {}
    for tp in partitions:
        queried[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(tp, timeout=timeout)
    to_fetch = [TopicPartition(t, p, max(lo, hi - 1)) for (t, p), (lo, hi) in queried.items() if hi > lo]
    if not to_fetch:
        return queried
    consumer.assign(to_fetch)
    pending = {(tp.topic, tp.partition) for tp in to_fetch}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for msg in consumer.consume(len(to_fetch) * 10, 0.2):
            pending.discard((msg.topic(), msg.partition()))
    out = dict(queried)
    for tp in to_fetch:
        lo, hi = consumer.get_watermark_offsets(tp, cached=True)
        out[(tp.topic, tp.partition)] = (queried[(tp.topic, tp.partition)][0], max(hi, queried[(tp.topic, tp.partition)][1]))
    consumer.unassign()
    return out


def end_offsets(settings: Settings, timeout: float = 10.0) -> dict[str, list[tuple[int, int, int]]]:
    """Per topic, (partition, low, high) watermarks."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": f"{settings.kafka.app_id}-admin", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=timeout)
        tps = [TopicPartition(name, p) for name, topic in meta.topics.items() if not name.startswith("__") for p in topic.partitions]
        marks = high_watermarks(consumer, tps, timeout)
        out: dict[str, list[tuple[int, int, int]]] = {}
        for (name, p), (lo, hi) in sorted(marks.items()):
            out.setdefault(name, []).append((p, lo, hi))
        return out
    finally:
        consumer.close()
