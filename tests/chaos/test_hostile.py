"""Hostile input at scale for ``make chaos``: 10,000 bad records of every kind mixed into
``TICKFLOW_CHAOS_TRADES`` good trades (``tests/test_hostile.py`` runs the same with 150 in 1,800)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.test_hostile import check_hostile_run

CHAOS_TRADES = int(os.environ.get("TICKFLOW_CHAOS_TRADES", "0"))
BAD_RECORDS = 10_000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(CHAOS_TRADES < 10 * BAD_RECORDS, reason=f"make chaos runs it (TICKFLOW_CHAOS_TRADES >= {10 * BAD_RECORDS:,}); make test runs tests/test_hostile.py"),
]


@pytest.mark.timeout(7200)
def test_ten_thousand_hostile_records_in_a_good_stream(topics: Settings, tmp_path: Path) -> None:
    check_hostile_run(topics, tmp_path, good=CHAOS_TRADES, bad=BAD_RECORDS)
