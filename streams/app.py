"""The Faust application: consumer group, agents and their timers, run inside our own event loop.

Faust is used for what it is good at here (group membership, partition assignment, fetching,
timers); state, checkpoints and outputs are tickflow's own (see agents.candle_agent).
"""

from __future__ import annotations

import logging

import faust

from streams.settings import Settings


def create_app(settings: Settings) -> faust.App:
    for noisy in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        autodiscover=False,
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        topic_partitions=settings.ticks_partitions,
        store="memory://",
        datadir=str(settings.tickflow_data_dir / "faust"),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=4096,
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
    )
