"""``news:PATH``: a headline file (CSV with any delimiter, or JSONL), scored, in event-time order.

Columns are found by name: a time (``created_at``, ``date``, ``published``, ``timestamp``...), a
title (``title``, ``headline``), optional text (``text``, ``description``, ``summary``) and url
(``url``, ``link``). Files are often newest first (both shared ones are): the whole file is read
and sorted by time, so windows close in order rather than revising every one. A row without a
title or a readable time goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import orjson
import structlog

from agents.sentiment import Scorer
from schemas.models import NewsScored
from streams.sources.base import BadInput, Record, Source, SourceItem, now_us

log = structlog.get_logger(__name__)

TIME_COLUMNS = ("created_at", "published_at", "published", "pubdate", "date", "datetime", "time", "timestamp", "ts")
TITLE_COLUMNS = ("title", "headline", "full_text", "tweet")
TEXT_COLUMNS = ("text", "description", "summary", "body", "content")
URL_COLUMNS = ("url", "link")
ID_COLUMNS = ("id", "guid", "item_id")
_FORMATS = ("%d-%m-%Y %H:%M", "%d-%m-%Y %H:%M:%S", "%d-%m-%Y", "%a %b %d %H:%M:%S %z %Y", "%Y-%m-%d %H:%M", "%Y-%m-%d")
MIN_MS = 1_230_940_800_000  # 2009-01-03


def parse_time_ms(value: object) -> int:
    """Milliseconds since the epoch from ISO 8601, RFC 822, epoch s/ms/µs or a d-m-Y date (UTC when no zone).

    Raises ValueError with the text when nothing fits.
    """
    text = str(value).strip()
    if not text:
        raise ValueError("empty time")
    try:
        x = float(text)
    except ValueError:
        pass
    else:
        ms = x * 1000 if x < 1e11 else x if x < 1e14 else x / 1000
        return _checked(int(ms), text)
    for parse in (lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")), parsedate_to_datetime):
        try:
            return _checked(_ms(parse(text)), text)
        except (ValueError, TypeError, IndexError):
            pass
    for fmt in _FORMATS:
        try:
            return _checked(_ms(datetime.strptime(text, fmt)), text)
        except ValueError:
            pass
    raise ValueError(f"unreadable time {text!r}")


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _checked(ms: int, text: str) -> int:
    if ms < MIN_MS or ms > now_us() // 1000 + 86_400_000:
        raise ValueError(f"time {text!r} outside the sane range")
    return ms


def pick(row: Mapping[str, object], names: Iterable[str]) -> str | None:
    lower = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    for n in names:
        v = lower.get(n)
        if v not in (None, ""):
            return str(v).strip()
    return None


def read_rows(path: Path) -> Iterator[tuple[dict[str, object] | None, bytes, str | None]]:
    """(row, raw bytes, problem) of a CSV (delimiter sniffed from the header) or JSONL file."""
    raw = path.read_bytes().decode("utf-8-sig", errors="replace")
    first = raw.lstrip()[:1]
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json") or first == "{":
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield None, line.encode(), f"bad JSON: {exc}"
                continue
            yield (row, line.encode(), None) if isinstance(row, dict) else (None, line.encode(), "JSON line is not an object")
        return
    header = raw.split("\n", 1)[0]
    delimiter = max(",;\t|", key=header.count)
    for row in csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter):
        blob = delimiter.join("" if v is None else str(v) for v in row.values()).encode()
        if None in row:
            yield None, blob, f"row has {len(row) - 1 + len(row[None])} fields, the header {len(row) - 1}"
        else:
            yield row, blob, None


def item_id(row: Mapping[str, object], url: str | None, title: str, ts: int) -> str:
    return pick(row, ID_COLUMNS) or url or hashlib.sha1(f"{ts}|{title}".encode()).hexdigest()


def scored(scorer: Scorer, source: str, ident: str, ts: int, title: str, text: str | None, url: str | None, engagement: float | None) -> Record:
    s = scorer.score(f"{title}. {text}" if text else title)
    item = NewsScored(source, ident, ts, title, s.label, s.score, ";".join(s.assets), scorer.model_id, now_us(), text, url, engagement)
    return Record("news_scored", item.key, item)


class NewsSource(Source):
    """Every headline of a file, scored, oldest first."""

    kind = "news"

    def __init__(self, path: Path | str, scorer: Scorer) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"news file {self.path} not found")
        self.scorer = scorer

    def parse(self, row: Mapping[str, object]) -> tuple[int, str, str | None, str | None, str, float | None]:
        """(ts, title, text, url, id, engagement) of a row; ValueError says what is missing."""
        title = pick(row, TITLE_COLUMNS)
        if not title:
            raise ValueError("no title")
        when = pick(row, TIME_COLUMNS)
        if when is None:
            raise ValueError("no time")
        ts = parse_time_ms(when)
        url = pick(row, URL_COLUMNS)
        return ts, title, pick(row, TEXT_COLUMNS), url, item_id(row, url, title, ts), None

    async def stream(self) -> AsyncIterator[SourceItem]:
        good: list[tuple[int, int, tuple]] = []
        bad = 0
        for n, (row, blob, problem) in enumerate(read_rows(self.path)):
            if row is not None:
                try:
                    good.append((0, n, self.parse(row)))
                    continue
                except ValueError as exc:
                    problem = str(exc)
            bad += 1
            yield BadInput(f"{self.kind}:{self.path.name} row {n + 1}: {problem}", blob)
        good.sort(key=lambda g: (g[2][0], g[1]))
        log.info("news file read", path=str(self.path), items=len(good), bad=bad)
        for i, (_, _, (ts, title, text, url, ident, engagement)) in enumerate(good):
            yield scored(self.scorer, self.kind, ident, ts, title, text, url, engagement)
            if i % 256 == 0:
                await asyncio.sleep(0)
