"""Fixtures of the fault scenarios: the seeded replay file and its clean run, once per session."""

from __future__ import annotations

import pytest

from tests.chaos.harness import CHAOS_TRADES, Dump, Replay, clean_dump, record, replay_file


@pytest.fixture(scope="session")
def chaos_replay(tmp_path_factory: pytest.TempPathFactory) -> Replay:
    return replay_file(directory=tmp_path_factory.mktemp("chaos-replay"))


@pytest.fixture(scope="session")
def chaos_clean(chaos_replay: Replay, tmp_path_factory: pytest.TempPathFactory) -> Dump:
    """Dumps of the stores after ``tickflow run --source replay:FILE --until-drained``, the reference."""
    return clean_dump(chaos_replay, tmp_path_factory.mktemp("chaos-clean"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """A scenario that fails before comparing still gets its row in ``make chaos``'s summary."""
    report = yield
    if report.when == "call" and report.failed:
        message = str(call.excinfo.value).splitlines()[0][:80] if call.excinfo else "failed"
        record(item.name.removeprefix("test_"), CHAOS_TRADES, 0, Dump(), f"FAILED: {message}", report.duration)
    return report
