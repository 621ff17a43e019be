"""The agent contract: what an agent is, without any Kafka, consumer or store in it.

An agent is a pure, partitioned state machine (compare bytewax's ``StatefulBatchLogic`` and Quix
Streams' state layer). The runtime (``streams.runtime``) owns everything else: consuming its input
topics, decoding records through the record registry (``schemas.registry``), one logic object per
input partition, checkpoints of ``snapshot()`` together with the next input offset, dead letters,
metrics, producing outputs, and calling ``on_timer`` only while the partition has no unread input.

Adding an agent is: a logic class here in ``agents/``, its record type(s) in ``schemas/`` with one
entry in ``schemas.registry``, one :class:`AgentSpec` in ``agents.registry``, and its tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class Inbound(NamedTuple):
    """One decoded input record. ``record`` is the registry name of its type (``"trade_batch"``).
    Tuples, not dataclasses: one is made per input record and per output, and a frozen dataclass
    cost five times as much to build."""

    record: str
    key: str | None
    value: Any  # the record's model (schemas.models), already decoded
    offset: int
    received_us: int | None = None  # wall clock at ingest receipt, when the record carries it


class Emit(NamedTuple):
    """An output record: ``record`` names its registry type, which fixes topic, schema and stores."""

    record: str
    key: str
    value: Any


class Reject(NamedTuple):
    """An input record the logic refuses for good: the runtime dead-letters its original bytes
    with ``reason`` and goes on. An agent of several input topics names the record's type too
    (offsets of two topics can be equal)."""

    offset: int
    reason: str
    record: str | None = None


Output = Emit | Reject


class AgentLogic(Protocol):
    """The state of one input partition and what it does. Pure: no I/O, no clocks read inside
    (time comes in as arguments), so a replay of the same input gives the same outputs."""

    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        """Records of this partition in offset order (already past the checkpoint)."""
        ...

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        """Periodic call. ``now`` is monotonic wall clock; ``quiet_s`` is how long the partition has
        had nothing unread (0 while input waits behind the consumer's position), so a timer that
        finalizes on quiet never fires under backlog."""
        ...

    def snapshot(self) -> bytes:
        """The state as bytes; the runtime stores it with the next input offset, atomically."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's (a snapshot of this or any older version)."""
        ...


class CandleHistory(Protocol):
    """Stored final candles, for warm starts (implemented by the stores in ``sinks/``)."""

    def before(self, exchange: str, symbol: str, interval: str, open_time: int, limit: int) -> list[Any]: ...


@dataclass(frozen=True)
class AgentContext:
    """What the runtime hands a logic factory: the settings and read-only services."""

    settings: Any  # streams.settings.Settings; typed loosely so agents/ stays free of streams/
    partition: int
    history: CandleHistory | None = None


@dataclass(frozen=True)
class AgentSpec:
    """One agent, declared once: the runtime, the CLI, ``--until-drained`` and the docs read it."""

    name: str  # consumer group suffix, state topic ``{name}-state``, metric label
    inputs: tuple[str, ...]  # registry names of the record types read (co-partitioned topics)
    outputs: tuple[str, ...]  # registry names of the record types emitted
    logic: Callable[[AgentContext], AgentLogic]  # a new, empty state for one partition
    timer_s: float | None = None  # how often on_timer runs; None = never
    needs_history: bool = False  # the runtime passes a CandleHistory when stores are configured
    enabled: Callable[[Any], bool] | None = None  # settings -> whether workers run it; None = always
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
