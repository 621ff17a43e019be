"""The data dir full while a seeded replay flows through the roles side by side.

The data dir holds the embedded ClickHouse store (written by the ClickHouse sink) and the broker's
log; agent checkpoints live in Kafka (the ``*-state`` topics). The data dir is a small tmpfs of its
own, so "full" is the kernel's own ENOSPC, which root gets too (a chmod would not stop root; a
read-only remount is refused while the roles hold files open for writing, so read-only state files
are tested where they are written, in tests/test_statefile.py). Expected: the ClickHouse sink says
why it cannot write, keeps its batch uncommitted and retries; nothing is dead-lettered, no role
exits; once there is space again the stores equal a clean run's.
"""

from __future__ import annotations

import contextlib
import errno
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.chaos.harness import CHAOS_SEED, Dump, Replay, Roles, compare, fresh_database, ingest_seconds
from tests.conftest import data_path
from tests.fake_bitcoind import FakeBitcoind
from tests.kafka_util import read_topic
from tests.test_candles_e2e import env_for, tickflow

pytestmark = pytest.mark.integration

DISK_MB = 256
OUTAGE_S = 4.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/data`` on a tmpfs of ``DISK_MB`` (needs root with CAP_SYS_ADMIN, else skipped)."""
    path = tmp_path / "data"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the data dir (root with CAP_SYS_ADMIN needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``: the next write there fails with ENOSPC."""
    filler = disk / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        block = b"\0" * (1 << 20)
        while True:
            f.write(block)
            f.flush()
    probe = disk / "probe"
    with pytest.raises(OSError) as full:
        probe.write_bytes(b"\0" * 65536)
    probe.unlink()
    assert full.value.errno == errno.ENOSPC
    return filler


def sink_failures(roles: Roles) -> int:
    return roles.log("sink-clickhouse", tail=10**7).count('"sink write failed; retrying"')


@pytest.mark.chaos  # a run of the roles: make chaos runs it; make test the cheap tests below
def test_a_full_data_dir_holds_the_clickhouse_sink_back_and_loses_nothing(
    chaos_replay: Replay, chaos_clean: Dump, small_disk: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(CHAOS_SEED + 4)
    ingest_s = ingest_seconds(chaos_replay)
    with fresh_database() as database, Roles(tmp_path, database) as roles:
        roles.start_all(chaos_replay, ingest_s=ingest_s)
        time.sleep(rng.uniform(0.2, 0.4) * ingest_s)

        filler = fill(small_disk)
        try:
            roles.wait_for("the ClickHouse sink to report the full disk", lambda: sink_failures(roles) > 0, timeout=60)
            until = time.monotonic() + OUTAGE_S
            roles.wait_for(f"{OUTAGE_S} s of a full disk", lambda: time.monotonic() >= until)
        finally:
            filler.unlink()
        log = roles.log("sink-clickhouse", tail=10**7)
        assert "No space left on device" in log or "NOT_ENOUGH_SPACE" in log, log[-3000:]

        roles.wait_settled()
        assert roles.progress(roles.settings.kafka.topic_dlq) == 0, "records were dead-lettered"
        compare("data dir full", chaos_clean, roles, chaos_replay, kills=0, started=started)



def bitcoind_ingest(topics: Settings, data_dir: Path) -> subprocess.CompletedProcess:
    """``tickflow ingest --source bitcoind:URL`` from height 50000 of the recorded blocks, data dir ``data_dir``."""
    env = env_for(topics, data_dir=data_dir, database=None)
    env.update({"BITCOIND_START_HEIGHT": "50000", "BITCOIND_RPC_USER": "rpc", "BITCOIND_RPC_PASSWORD": "secret", "BITCOIND_POLL_S": "0.2"})
    with FakeBitcoind(data_path("bitcoin_onchain_sample")) as fake:
        return tickflow("ingest", "--source", f"bitcoind:{fake.url}", env=env, timeout=120)


def test_a_source_position_that_cannot_be_saved_on_a_full_disk_stops_ingest_after_delivering(topics: Settings, small_disk: Path) -> None:
    """The bitcoind source saves the height it delivered under the data dir: on a full disk ingest
    stops with exit 1 and one clear message, the block already in the broker, nothing half written."""
    fill(small_disk)
    done = bitcoind_ingest(topics, small_disk)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "cannot save" in done.stderr and "No space left on device" in done.stderr and "the previous state is kept" in done.stderr, done.stderr[-3000:]
    assert "resumes from the last saved position" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert [m.key() for m in read_topic(topics, topics.kafka.topic_onchain_blocks)] == [b"btc"], "the block read before the failed save is not in the broker"
    assert sorted(p.name for p in small_disk.rglob("*")) == ["bitcoind", "filler"]


def test_a_source_position_that_cannot_be_read_stops_ingest_at_start_with_a_clear_error(topics: Settings, tmp_path: Path) -> None:
    """A file where the position directory should be (which root cannot write through either)."""
    (tmp_path / "bitcoind").write_text("a file where the position directory should be")
    done = bitcoind_ingest(topics, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "cannot read" in done.stderr and "Not a directory" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert read_topic(topics, topics.kafka.topic_onchain_blocks) == []
