"""``feargreed:PATH`` and ``feargreed:api``: the Crypto Fear & Greed index, one record per UTC day.

Files carry a ``date`` or a ``timestamp`` (one shared copy stamps each day 5.5 h after midnight):
both become 00:00 UTC of the day. Days come out in order; a missing day is logged as a gap and
listed in ``gaps`` (the index has holes, and nothing should pretend a day had a value). A row
without a usable value, or a second row for a day, goes to the dead-letter topic. The API source
reads the whole history once, then polls for the newest day with tenacity's backoff on errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

import httpx
import orjson
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from schemas.models import FearGreed
from streams.sources.base import BadInput, Record, Source, SourceItem, now_us
from streams.sources.news import parse_time_ms, pick, read_rows

log = structlog.get_logger(__name__)
DAY_MS = 86_400_000
CLASSES = ("Extreme Fear", "Fear", "Neutral", "Greed", "Extreme Greed")


def classify(value: int) -> str:
    """alternative.me's bands: 0-24, 25-46, 47-54, 55-75, 76-100."""
    return CLASSES[0] if value < 25 else CLASSES[1] if value < 47 else CLASSES[2] if value < 55 else CLASSES[3] if value < 76 else CLASSES[4]


def parse_row(row: Mapping[str, object]) -> tuple[int, int, str]:
    """(UTC day in ms, value, class) of a file row or an API entry; ValueError says why not."""
    when = pick(row, ("date", "timestamp", "time"))
    if when is None:
        raise ValueError("no date or timestamp")
    ts = parse_time_ms(when)
    raw = pick(row, ("value", "fng_value"))
    if raw is None:
        raise ValueError("no value")
    try:
        f = float(raw)
    except ValueError:
        raise ValueError(f"value {raw!r} is not a number") from None
    if not 0 <= f <= 100 or f != int(f):
        raise ValueError(f"value {raw!r} is not an integer from 0 to 100")
    cls = pick(row, ("classification", "value_classification", "class")) or classify(int(f))
    if cls not in CLASSES:
        raise ValueError(f"unknown classification {cls!r}")
    return ts - ts % DAY_MS, int(f), cls


def gaps(days: Iterable[int]) -> list[tuple[int, int]]:
    """(first missing day, days missing) between consecutive days, in ms."""
    out = []
    prev = None
    for d in sorted(days):
        if prev is not None and d - prev > DAY_MS:
            out.append((prev + DAY_MS, (d - prev) // DAY_MS - 1))
        prev = d
    return out


class FearGreedFileSource(Source):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Fear & Greed file {self.path} not found")
        self.gaps: list[tuple[int, int]] = []

    async def stream(self) -> AsyncIterator[SourceItem]:
        days: dict[int, tuple[int, str]] = {}
        for n, (row, blob, problem) in enumerate(read_rows(self.path)):
            if row is not None:
                try:
                    day, value, cls = parse_row(row)
                    if day in days:
                        raise ValueError(f"a second row for day {day}")
                    days[day] = (value, cls)
                    continue
                except ValueError as exc:
                    problem = str(exc)
            yield BadInput(f"feargreed:{self.path.name} row {n + 1}: {problem}", blob)
        self.gaps = gaps(days)
        for start, missing in self.gaps:
            log.warning("fear & greed gap", path=str(self.path), first_missing_day_ms=start, days=missing)
        log.info("fear & greed file read", path=str(self.path), days=len(days), gaps=len(self.gaps), missing_days=sum(m for _, m in self.gaps))
        received = now_us()
        for i, day in enumerate(sorted(days)):
            value, cls = days[day]
            fg = FearGreed(day, value, cls, str(self.path.name), received)
            yield Record("fear_greed", fg.key, fg)
            if i % 256 == 0:
                await asyncio.sleep(0)


class FearGreedApiSource(Source):
    """alternative.me's ``/fng/`` JSON API: all history first, then the newest days every ``poll_s``."""

    def __init__(self, url: str, poll_s: float = 3600.0, *, max_polls: int | None = None) -> None:
        self.url = url
        self.poll_s = poll_s
        self.max_polls = max_polls if max_polls is not None else (1 if poll_s <= 0 else None)
        self.client = httpx.AsyncClient(timeout=20.0, follow_redirects=True)
        self.gaps: list[tuple[int, int]] = []

    async def _get(self, limit: int) -> bytes:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(5), wait=wait_exponential(0.5, max=30), retry=retry_if_exception_type(httpx.TransportError), reraise=True
        ):
            with attempt:
                r = await self.client.get(self.url, params={"limit": limit, "format": "json"})
                r.raise_for_status()
                return r.content
        raise AssertionError("unreachable")

    async def stream(self) -> AsyncIterator[SourceItem]:
        seen: dict[int, int] = {}
        polls = 0
        while self.max_polls is None or polls < self.max_polls:
            body = await self._get(0 if polls == 0 else 2)
            polls += 1
            try:
                entries = orjson.loads(body)["data"]
                if not isinstance(entries, list):
                    raise TypeError("data is not a list")
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                yield BadInput(f"feargreed:api answer unreadable: {exc}", body[:65536])
                entries = []
            parsed = []
            for e in entries:
                try:
                    parsed.append(parse_row(e))
                except (ValueError, AttributeError) as exc:
                    yield BadInput(f"feargreed:api entry: {exc}", orjson.dumps(e))
            received = now_us()
            for day, value, cls in sorted(parsed):
                if seen.get(day) == value:
                    continue
                seen[day] = value
                fg = FearGreed(day, value, cls, "api", received)
                yield Record("fear_greed", fg.key, fg)
            new_gaps = gaps(seen)
            if new_gaps != self.gaps:
                for start, missing in new_gaps:
                    log.warning("fear & greed gap", url=self.url, first_missing_day_ms=start, days=missing)
                self.gaps = new_gaps
            if self.max_polls is None or polls < self.max_polls:
                await asyncio.sleep(self.poll_s)

    async def aclose(self) -> None:
        await self.client.aclose()
