"""Topics come from the record-type registry: one per record type, plus the agents' checkpoints."""

from __future__ import annotations

from agents.registry import AGENTS
from schemas.registry import RECORDS
from streams.settings import Settings
from streams.topics import isolated, topic_specs


def test_every_record_type_gets_its_topic_with_its_partitioning_and_config() -> None:
    settings = Settings(ticks_partitions=6, topic_candles="c-x")
    specs = {s.name: s for s in topic_specs(settings)}
    for rt in RECORDS.values():
        spec = specs[getattr(settings.kafka, rt.topic_setting)]
        assert spec.partitions == (6 if rt.partitioned else 1)
        assert spec.config == rt.topic_config
    assert "c-x" in specs and "candles" not in specs  # the setting names the topic
    assert specs["dlq"].partitions == 1
    assert specs["candles-live"].config == {"retention.ms": "3600000"}
    for state in (settings.kafka.topic_candles_state, settings.kafka.topic_indicators_state):
        assert specs[state].config == {"cleanup.policy": "compact"} and specs[state].partitions == 6
    assert len(specs) == len(RECORDS) + len(AGENTS)  # a state topic per agent


def test_isolated_settings_rename_every_topic() -> None:
    base = {s.name for s in topic_specs(Settings())}
    tagged = {s.name for s in topic_specs(isolated(Settings(), "t1"))}
    assert tagged == {f"{name}-t1" for name in base}
