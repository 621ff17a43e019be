"""A replay gives the same bytes: two ``tickflow run --until-drained`` of one file into fresh stores
leave byte-identical ordered dumps of every stored table in ClickHouse and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import replay_and_dump
from tests.conftest import data_path

pytestmark = pytest.mark.integration


def test_two_replays_give_byte_identical_tables(tmp_path: Path) -> None:
    path = data_path("freqtrade_binance_xrpeth", "XRP_ETH-trades-ccxt-list.json")
    first = replay_and_dump(path, tmp_path / "first", speed=None)
    second = replay_and_dump(path, tmp_path / "second", speed=None)
    assert sorted(first.tables) == sorted(second.tables)
    for name in ("candles", "technical_metrics"):
        for store in ("clickhouse", "postgres"):
            assert first.tables[f"{store}.{name}"].rows > 100, f"{store}.{name} has almost no rows"
    for name, table in first.tables.items():
        assert table.path.read_bytes() == second.tables[name].path.read_bytes(), f"{name} differs between two replays of the same file"
