"""Shared fixtures: real data location, an embedded Tansu broker per test session, unique topics."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} absent (tests read ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Kafka bootstrap address: KAFKA_BOOTSTRAP if set, else an embedded Tansu for the session."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    broker = EmbeddedBroker(free_port(), log_file=tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topics(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings with unique topic names and app id on the session broker, topics created."""
    from streams.topics import ensure_topics, isolated

    settings = isolated(
        Settings(kafka_bootstrap=kafka_bootstrap, ticks_partitions=4, tickflow_data_dir=tmp_path / "data", metrics_port=0),
        uuid.uuid4().hex[:8],
    )
    ensure_topics(settings)
    return settings
