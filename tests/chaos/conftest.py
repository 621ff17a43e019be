"""Fixtures of the fault scenarios: the seeded replay file and its clean run, once per session."""

from __future__ import annotations

import pytest

from tests.chaos.harness import Dump, Replay, clean_dump, replay_file


@pytest.fixture(scope="session")
def chaos_replay(tmp_path_factory: pytest.TempPathFactory) -> Replay:
    return replay_file(directory=tmp_path_factory.mktemp("chaos-replay"))


@pytest.fixture(scope="session")
def chaos_clean(chaos_replay: Replay, tmp_path_factory: pytest.TempPathFactory) -> Dump:
    """Dumps of the stores after ``tickflow run --source replay:FILE --until-drained``, the reference."""
    return clean_dump(chaos_replay, tmp_path_factory.mktemp("chaos-clean"))
