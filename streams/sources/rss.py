"""``rss:URL``: an RSS 2.0 or Atom feed, polled politely, each new entry scored once.

Each poll sends the last ``ETag`` and ``Last-Modified`` back (``If-None-Match``,
``If-Modified-Since``), so an unchanged feed costs a 304. Entries are known by guid/id, else link;
the ids seen and the validators are kept in a JSON state file, so a restart neither repeats nor
drops entries. An entry without a title or a readable date goes to the dead-letter topic; a feed
that does not parse is dead-lettered whole and polled again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import structlog

from agents.sentiment import Scorer
from streams.sources.base import BadInput, Source, SourceItem
from streams.sources.news import parse_time_ms, scored
from streams.statefile import StateFileError, read_state, write_state

log = structlog.get_logger(__name__)
ATOM = "{http://www.w3.org/2005/Atom}"
KEEP_IDS = 5000  # ids remembered per feed: far more than a feed lists at once


def _text(el: ET.Element | None) -> str | None:
    if el is None:
        return None
    t = "".join(el.itertext()).strip()
    return t or None


def entries(body: bytes) -> Iterator[tuple[dict[str, str | None], bytes]]:
    """(fields, raw entry XML) of each RSS item or Atom entry; ET.ParseError when the feed is no XML."""
    root = ET.fromstring(body)
    for item in root.iter("item"):
        yield {
            "id": _text(item.find("guid")) or _text(item.find("link")),
            "title": _text(item.find("title")),
            "text": _text(item.find("description")),
            "url": _text(item.find("link")),
            "time": _text(item.find("pubDate")) or _text(item.find("{http://purl.org/dc/elements/1.1/}date")),
        }, ET.tostring(item)
    for entry in root.iter(f"{ATOM}entry"):
        link = entry.find(f"{ATOM}link[@rel='alternate']")
        if link is None:
            link = entry.find(f"{ATOM}link")
        href = link.get("href") if link is not None else None
        yield {
            "id": _text(entry.find(f"{ATOM}id")) or href,
            "title": _text(entry.find(f"{ATOM}title")),
            "text": _text(entry.find(f"{ATOM}summary")) or _text(entry.find(f"{ATOM}content")),
            "url": href,
            "time": _text(entry.find(f"{ATOM}published")) or _text(entry.find(f"{ATOM}updated")),
        }, ET.tostring(entry)


class RssState:
    """Validators and seen ids of each feed, in one JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.feeds: dict[str, dict] = {}
        try:
            self.feeds = read_state(path) or {}
        except StateFileError as exc:
            log.warning("rss state unreadable, starting afresh", path=str(path), error=str(exc))

    def feed(self, url: str) -> dict:
        return self.feeds.setdefault(url, {"etag": None, "last_modified": None, "seen": []})

    def save(self) -> None:
        write_state(self.path, self.feeds)


class RssSource(Source):
    def __init__(self, url: str, scorer: Scorer, state_path: Path, poll_s: float = 60.0, *, max_polls: int | None = None) -> None:
        self.url = url
        self.scorer = scorer
        self.state = RssState(state_path)
        self.poll_s = poll_s
        self.max_polls = max_polls
        self.client = httpx.AsyncClient(timeout=20.0, follow_redirects=True, headers={"User-Agent": "tickflow-rss"})
        self.not_modified = 0

    async def stream(self) -> AsyncIterator[SourceItem]:
        polls = 0
        while self.max_polls is None or polls < self.max_polls:
            polls += 1
            async for item in self._poll():
                yield item
            if self.max_polls is None or polls < self.max_polls:
                await asyncio.sleep(self.poll_s)

    async def _poll(self) -> AsyncIterator[SourceItem]:
        feed = self.state.feed(self.url)
        headers = {}
        if feed["etag"]:
            headers["If-None-Match"] = feed["etag"]
        if feed["last_modified"]:
            headers["If-Modified-Since"] = feed["last_modified"]
        try:
            r = await self.client.get(self.url, headers=headers)
        except httpx.TransportError as exc:
            log.warning("rss poll failed", url=self.url, error=str(exc))
            return
        if r.status_code == 304:
            self.not_modified += 1
            return
        if r.status_code != 200:
            log.warning("rss poll refused", url=self.url, status=r.status_code)
            return
        try:
            found = list(entries(r.content))
        except ET.ParseError as exc:
            yield BadInput(f"rss:{self.url} is not a feed: {exc}", r.content[:65536])
            return
        seen = feed["seen"]
        known = set(seen)
        fresh = []
        for fields, raw in found:
            ident = fields["id"]
            if ident in known:
                continue
            try:
                if not fields["title"]:
                    raise ValueError("no title")
                if not ident:
                    raise ValueError("no guid, id or link")
                ts = parse_time_ms(fields["time"] or "")
            except ValueError as exc:
                yield BadInput(f"rss:{self.url} entry: {exc}", raw)
                continue
            fresh.append((ts, ident, fields))
            known.add(ident)
        for ts, ident, fields in sorted(fresh, key=lambda f: f[0]):
            yield scored(self.scorer, "rss", ident, ts, fields["title"] or "", fields["text"], fields["url"], None)
            seen.append(ident)
        del seen[:-KEEP_IDS]
        feed["etag"] = r.headers.get("etag")
        feed["last_modified"] = r.headers.get("last-modified")
        self.state.save()  # after the entries went out: a crash before it repeats them, never loses them
        log.info("rss polled", url=self.url, entries=len(found), new=len(fresh))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
