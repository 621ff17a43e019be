"""The source contract: an async iterator of ``TradeBatch``es (and ``BadInput`` it could not parse).

A source of another record type (news, Fear & Greed) yields :class:`Record`: the registry name of
its type, the partition key and the model; ingest writes it to that type's topic.

A source never raises on bad data: it yields ``BadInput`` with the original bytes and the reason
(``schemas.validation.reason``: a machine-readable code, then the detail), and the ingest loop
sends that to the dead-letter topic and goes on. Sources of other record types
(on-chain rows and blocks) yield ``Record``s, which go to the topic of their registry type.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from schemas.models import Trade, TradeBatch


@dataclass(slots=True)
class BadInput:
    reason: str
    payload: bytes


@dataclass(slots=True)
class Record:
    """A record of any registered type (``schemas.registry`` name), for its topic under ``key``.

    ``on_delivered``, when set, is called once the broker has the record (and everything before
    it): a source that resumes from its own saved position saves it there, never ahead of the log.
    """

    record: str
    key: str
    value: Any
    on_delivered: Callable[[], None] | None = None


SourceItem = TradeBatch | BadInput | Record


class Source(abc.ABC):
    """Yields batches of trades of one symbol each; ``aclose`` releases connections and files."""

    @abc.abstractmethod
    def stream(self) -> AsyncIterator[SourceItem]: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        return None

    def again(self) -> Source | None:
        """The same input from its start, as a new source: what ingest sends again when the broker
        restarted without its log. None (the default) for a live feed, which simply goes on."""
        return None


def now_us() -> int:
    return time.time_ns() // 1000


class MicroBatcher:
    """Groups a time-ordered trade stream into per-symbol batches.

    A symbol's batch closes at ``max_trades`` trades or when event time has moved ``max_ms``
    past its first trade, so replays produce the same batches whatever the replay speed.
    """

    def __init__(self, exchange: str, max_trades: int, max_ms: int) -> None:
        self.exchange = exchange
        self.max_trades = max_trades
        self.max_us = max_ms * 1000
        self._open: dict[str, list[Trade]] = {}
        # Open batches by first trade time, so a trade finds the expired ones without looking at
        # every symbol; (first ts, seq, symbol, buffer), stale once that buffer has closed.
        self._by_start: list[tuple[int, int, str, list[Trade]]] = []
        self._seq = itertools.count()

    def add(self, symbol: str, trade: Trade) -> Iterator[TradeBatch]:
        """Add one trade; yield batches that closed (of any symbol) because event time moved on."""
        buf = self._open.get(symbol)
        if buf is not None and trade.ts - buf[0].ts >= self.max_us:
            yield self._close(symbol)
            buf = None
        if buf is None:
            buf = self._open[symbol] = []
            heapq.heappush(self._by_start, (trade.ts, next(self._seq), symbol, buf))
        buf.append(trade)
        if len(buf) >= self.max_trades:
            yield self._close(symbol)
        by_start, horizon, own = self._by_start, trade.ts - self.max_us, None
        while by_start and by_start[0][0] <= horizon:
            entry = heapq.heappop(by_start)
            other = entry[2]
            if self._open.get(other) is not entry[3]:
                continue  # closed already
            if other == symbol:
                own = entry  # this trade's own batch closes by count or on its symbol's next trade
                continue
            yield self._close(other)
        if own is not None:
            heapq.heappush(by_start, own)

    def flush(self) -> Iterable[TradeBatch]:
        self._by_start.clear()
        return [self._close(s) for s in list(self._open)]

    def _close(self, symbol: str) -> TradeBatch:
        return TradeBatch(self.exchange, symbol, now_us(), self._open.pop(symbol))
