"""A replay gives the same bytes: a second ``tickflow run --until-drained`` of the seeded replay
file (five symbols, trades out of order, late trades that revise candles) into fresh stores leaves
byte-identical ordered dumps of every stored table in ClickHouse and PostgreSQL. The first run is
the fault scenarios' clean run, shared with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Dump, Replay, replay_and_dump

pytestmark = pytest.mark.integration


def test_two_replays_give_byte_identical_tables(chaos_replay: Replay, chaos_clean: Dump, tmp_path: Path) -> None:
    second = replay_and_dump(chaos_replay.path, tmp_path / "second")
    assert sorted(chaos_clean.tables) == sorted(second.tables)
    for name in ("candles", "technical_metrics"):
        for store in ("clickhouse", "postgres"):
            assert chaos_clean.tables[f"{store}.{name}"].rows > 100, f"{store}.{name} has almost no rows"
    for name, table in chaos_clean.tables.items():
        assert table.path.read_bytes() == second.tables[name].path.read_bytes(), f"{name} differs between two replays of the same file"
