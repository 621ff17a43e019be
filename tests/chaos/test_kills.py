"""Processes killed outright (SIGKILL: no handler, nothing flushed or committed) while a seeded
replay flows through the roles side by side; after restarts the stores equal a clean run's.

Ingest is paced (``--speed``) to last ``ingest_seconds``, so the kills land while trades still arrive.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.chaos.harness import CHAOS_KILLS, CHAOS_SEED, Dump, Replay, Roles, compare, fresh_database, ingest_seconds

pytestmark = pytest.mark.integration

# Each scenario alone, at the length make chaos gives it (a run of the roles each, tens of seconds
# even short): make test runs the combined short run below instead.
scenario = pytest.mark.chaos

def wait_until(roles: Roles, at: float, what: str) -> None:
    roles.wait_for(what, lambda: time.monotonic() >= at, timeout=max(at - time.monotonic(), 0) + 10)


def kill_worker(roles: Roles) -> None:
    """SIGKILL the worker once it has partitions (a restart that never got any has no state) and start it again."""
    roles.wait_for("the worker's partitions", roles.workers_timing)
    roles.kill("worker")
    roles.start("worker")


def kill_with_open_windows(roles: Roles, ingest_s: float) -> None:
    """After the input ended, once the worker has caught up and before its idle close: the restart
    restores partitions holding open windows that get no further input, and must still close them."""
    candles_group = f"{roles.settings.kafka.app_id}-candles"
    roles.wait_for("the end of the input", lambda: not roles.alive("ingest"), timeout=ingest_s * 4 + 120)
    roles.wait_for("the worker to catch up", lambda: roles.workers_timing() and roles.lag()[candles_group] == 0, timeout=300)
    roles.kill("worker")
    roles.start("worker")


@scenario
def test_worker_killed_and_restarted_leaves_the_stores_of_a_clean_run(chaos_replay: Replay, chaos_clean: Dump, tmp_path: Path) -> None:
    """``CHAOS_KILLS`` kills (5 under ``make chaos``): all but the last at seeded random points of
    the input; the last after the input ended, once the worker has caught up and before its idle
    close: the restarted worker restores partitions with open windows that get no further input,
    and must still close them."""
    started = time.monotonic()
    rng = random.Random(CHAOS_SEED + 1)
    ingest_s = ingest_seconds(chaos_replay)
    with fresh_database() as database, Roles(tmp_path, database) as roles:
        roles.start_all(chaos_replay, ingest_s=ingest_s)
        t0 = time.monotonic()
        for at in sorted(rng.uniform(0.05, 0.9) * ingest_s for _ in range(CHAOS_KILLS - 1)):
            wait_until(roles, t0 + at, f"kill point {at:.1f} s")
            kill_worker(roles)
        kill_with_open_windows(roles, ingest_s)
        roles.wait_settled()
        compare("worker killed", chaos_clean, roles, chaos_replay, kills=CHAOS_KILLS, started=started)


@scenario
def test_one_of_two_workers_killed_mid_stream_leaves_the_stores_of_a_clean_run(chaos_replay: Replay, chaos_clean: Dump, tmp_path: Path) -> None:
    """Two workers share the partitions; one is killed and not restarted: its partitions move to
    the other (a rebalance mid-stream), which restores their checkpoints."""
    started = time.monotonic()
    rng = random.Random(CHAOS_SEED + 2)
    ingest_s = ingest_seconds(chaos_replay)
    with fresh_database() as database, Roles(tmp_path, database) as roles:
        roles.start_all(chaos_replay, workers=2, ingest_s=ingest_s)
        wait_until(roles, time.monotonic() + rng.uniform(0.2, 0.7) * ingest_s, "the kill point")
        assert roles.alive("ingest"), "the input ended before the kill"
        roles.kill("worker-2")
        roles.wait_settled()
        compare("two workers, one killed", chaos_clean, roles, chaos_replay, kills=1, started=started)


@scenario
def test_each_store_sink_killed_mid_batch_and_restarted_leaves_the_stores_of_a_clean_run(chaos_replay: Replay, chaos_clean: Dump, tmp_path: Path) -> None:
    """The ClickHouse sink (holding the embedded store) and then the PostgreSQL sink are killed
    while records flow, with records consumed or waiting that are not committed, and restarted."""
    started = time.monotonic()
    rng = random.Random(CHAOS_SEED + 3)
    ingest_s = ingest_seconds(chaos_replay)
    with fresh_database() as database, Roles(tmp_path, database) as roles:
        roles.start_all(chaos_replay, ingest_s=ingest_s)
        t0 = time.monotonic()
        sinks = ("sink-clickhouse", "sink-postgres")
        for name, at in zip(sinks, sorted(rng.uniform(0.2, 0.8) * ingest_s for _ in sinks), strict=True):
            wait_until(roles, t0 + at, f"kill point of {name}")
            group = f"{roles.settings.kafka.app_id}-{name}"
            roles.wait_for(f"uncommitted records of {name}", lambda group=group: roles.lag()[group] > 0)
            roles.kill(name)
            roles.start(name)
        roles.wait_settled()
        compare("sinks killed", chaos_clean, roles, chaos_replay, kills=len(sinks), started=started)


def test_workers_and_sinks_killed_in_one_short_run_leave_the_stores_of_a_clean_run(chaos_replay: Replay, chaos_clean: Dump, tmp_path: Path) -> None:
    """The scenarios above in one run, cheap enough for make test: two workers, one killed (a
    rebalance); each store sink killed with records uncommitted and restarted; the surviving worker
    killed mid-stream and once more after the input ended, with open windows it restores and must
    still close."""
    started = time.monotonic()
    rng = random.Random(CHAOS_SEED + 5)
    ingest_s = ingest_seconds(chaos_replay)
    with fresh_database() as database, Roles(tmp_path, database) as roles:
        roles.start_all(chaos_replay, workers=2, ingest_s=ingest_s)
        t0 = time.monotonic()
        at = sorted(rng.uniform(0.05, 0.6) * ingest_s for _ in range(4))
        wait_until(roles, t0 + at[0], "the rebalance kill")
        roles.kill("worker-2")
        for name, when in zip(("sink-clickhouse", "sink-postgres"), at[1:3], strict=True):
            wait_until(roles, t0 + when, f"kill point of {name}")
            group = f"{roles.settings.kafka.app_id}-{name}"
            roles.wait_for(f"uncommitted records of {name}", lambda group=group: roles.lag()[group] > 0)
            roles.kill(name)
            roles.start(name)
        wait_until(roles, t0 + at[3], "the worker kill")
        kill_worker(roles)
        kill_with_open_windows(roles, ingest_s)
        roles.wait_settled()
        compare("workers and sinks killed (short)", chaos_clean, roles, chaos_replay, kills=5, started=started)
