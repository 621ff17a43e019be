"""Sentiment aggregates: scored items and Fear & Greed in, per-asset 1h and 1d windows out.

Event time, like candles: watermark = newest item time - ``SENTIMENT_LATENESS_MS``; a window is
emitted once, final, when the watermark passes its end (or the partition has been quiet for
``SENTIMENT_IDLE_TIMEOUT_S``). An item up to ``SENTIMENT_GRACE_MS`` late revises its windows
(same key, ``revision + 1``); a later one is rejected to the dead-letter topic with the reason. A
day's Fear & Greed value that comes after its windows were emitted revises them too (windows
still waiting for theirs are kept past the grace period for it, up to ``max_waiting``). Every item
counts for ``MARKET`` and for each asset it names. An item id seen before (a re-read file, a feed
polled again) counts once. State is plain data, so ``snapshot`` is its JSON and a restore
continues exactly; outputs depend only on the input order, never on a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from agents.sentiment import MARKET
from agents.spec import AgentContext, AgentSpec, Emit, Inbound, Output, Reject
from schemas.models import FearGreed, NewsScored, SentimentAggregate

INTERVALS_MS: dict[str, int] = {"1h": 3_600_000, "1d": 86_400_000}
DAY_MS = 86_400_000
_SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class Window:
    """Running sums of one asset's window; shares and means are derived when emitted."""

    items: int = 0
    score_sum: float = 0.0
    positive: int = 0
    negative: int = 0
    neutral: int = 0
    engagement: float = 0.0
    weighted_sum: float = 0.0
    revision: int = -1  # -1: never emitted
    emitted_fg: int | None = None  # the Fear & Greed value its last emission carried

    def add(self, item: NewsScored) -> None:
        self.items += 1
        self.score_sum += item.score
        if item.label == "positive":
            self.positive += 1
        elif item.label == "negative":
            self.negative += 1
        else:
            self.neutral += 1
        if item.engagement is not None and item.engagement > 0:
            self.engagement += item.engagement
            self.weighted_sum += item.engagement * item.score


class SentimentLogic:
    """The :class:`agents.spec.AgentLogic` of the sentiment agent (one per partition)."""

    def __init__(self, lateness_ms: int = 300_000, grace_ms: int = 172_800_000, idle_timeout_s: float = 10.0, max_waiting: int = 100_000) -> None:
        self.lateness_ms = lateness_ms
        self.max_waiting = max_waiting
        self.grace_ms = grace_ms
        self.idle_timeout_s = idle_timeout_s
        self.watermark: int | None = None
        self.windows: dict[tuple[str, str, int], Window] = {}  # (asset, interval, start)
        self.fear_greed: dict[int, tuple[int, str]] = {}  # day start -> (value, class)
        self.seen: dict[str, int] = {}  # "source:item_id" -> item time, forgotten past the grace period
        self.final_by_day: dict[int, set[tuple[str, str, int]]] = {}  # day -> its emitted windows (derived)

    # -- the contract -------------------------------------------------------------------------
    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        out: list[Output] = []
        for r in records:
            if r.record == "fear_greed":
                out.extend(self._fear_greed(r.value))
            elif r.record == "news_scored":
                out.extend(self._item(r))
            else:
                out.append(Reject(r.offset, f"sentiment agent does not read {r.record!r} records", r.record))
        out.extend(self._close_due())
        return out

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        if quiet_s < self.idle_timeout_s:
            return []
        return [self._emit(k, w) for k, w in sorted(self.windows.items()) if w.revision < 0 and w.items]

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "v": _SNAPSHOT_VERSION,
                "watermark": self.watermark,
                "windows": [[a, i, s, w.items, w.score_sum, w.positive, w.negative, w.neutral, w.engagement, w.weighted_sum, w.revision, w.emitted_fg] for (a, i, s), w in self.windows.items()],
                "fear_greed": [[d, v, c] for d, (v, c) in self.fear_greed.items()],
                "seen": self.seen,
            }
        )

    def restore(self, data: bytes) -> None:
        d = orjson.loads(data)
        if d.get("v") != _SNAPSHOT_VERSION:
            raise ValueError(f"sentiment snapshot version {d.get('v')!r} is not {_SNAPSHOT_VERSION}")
        self.watermark = d["watermark"]
        self.windows = {(a, i, s): Window(n, ss, p, ng, nu, e, ws, rev, fg) for a, i, s, n, ss, p, ng, nu, e, ws, rev, fg in d["windows"]}
        self.fear_greed = {dd: (v, c) for dd, v, c in d["fear_greed"]}
        self.seen = dict(d["seen"])
        self.final_by_day = {}
        for key, w in self.windows.items():
            if w.revision >= 0:
                self.final_by_day.setdefault(key[2] - key[2] % DAY_MS, set()).add(key)

    # -- inside ---------------------------------------------------------------------------------
    def _item(self, r: Inbound) -> list[Output]:
        item: NewsScored = r.value
        if not -1.0 <= item.score <= 1.0 or item.label not in ("positive", "negative", "neutral"):
            return [Reject(r.offset, f"bad sentiment label {item.label!r} or score {item.score!r}", r.record)]
        ident = f"{item.source}:{item.item_id}"
        if ident in self.seen:
            return []
        if self.watermark is not None and item.ts - item.ts % 3_600_000 + 3_600_000 <= self.watermark - self.grace_ms:
            return [Reject(r.offset, f"item at {item.ts} is older than the grace period: watermark {self.watermark}, grace {self.grace_ms} ms", r.record)]
        self.seen[ident] = item.ts
        out: list[Output] = []
        assets = [MARKET, *(a for a in item.assets.split(";") if a)]
        for interval, size in INTERVALS_MS.items():
            start = item.ts - item.ts % size
            for asset in assets:
                key = (asset, interval, start)
                w = self.windows.get(key)
                if w is None:
                    w = self.windows[key] = Window(emitted_fg=None)
                w.add(item)
                if w.revision >= 0:  # already final: a revision
                    out.append(self._emit(key, w))
        wm = item.ts - self.lateness_ms
        if self.watermark is None or wm > self.watermark:
            self.watermark = wm
        return out

    def _fear_greed(self, fg: FearGreed) -> list[Output]:
        day = fg.day - fg.day % DAY_MS
        self.fear_greed[day] = (fg.value, fg.classification)
        out: list[Output] = []
        for key in sorted(self.final_by_day.get(day, ())):
            w = self.windows[key]
            if w.emitted_fg != fg.value:
                out.append(self._emit(key, w))
        return out

    def _close_due(self) -> list[Output]:
        if self.watermark is None:
            return []
        out = []
        for key, w in sorted(self.windows.items()):
            if w.revision < 0 and key[2] + INTERVALS_MS[key[1]] <= self.watermark:
                out.append(self._emit(key, w))
        self._forget()
        return out

    def _forget(self) -> None:
        """Drop final windows, days and item ids past the grace period: state stays bounded.

        A final window still without its day's Fear & Greed value is kept (up to
        ``max_waiting``, oldest dropped first): the runtime interleaves the two input topics as
        it reads them, and kept windows let a value that comes later still revise them, so the
        newest version of every window is the same whichever topic was read first.
        """
        assert self.watermark is not None
        horizon = self.watermark - self.grace_ms
        expired = sorted((k for k, w in self.windows.items() if w.revision >= 0 and k[2] + INTERVALS_MS[k[1]] <= horizon), key=lambda k: k[2])
        waiting = [k for k in expired if self.windows[k].emitted_fg is None]
        keep = set(waiting[-self.max_waiting :]) if self.max_waiting > 0 else set()
        for key in expired:
            if key not in keep:
                del self.windows[key]
                day = key[2] - key[2] % DAY_MS
                keys = self.final_by_day[day]
                keys.discard(key)
                if not keys:
                    del self.final_by_day[day]
        oldest_waiting = min((k[2] for k in keep), default=horizon)
        for day in [d for d in self.fear_greed if d + DAY_MS <= min(horizon, oldest_waiting) - DAY_MS]:
            del self.fear_greed[day]
        if len(self.seen) > 1024:
            self.seen = {k: ts for k, ts in self.seen.items() if ts + DAY_MS > horizon}

    def _emit(self, key: tuple[str, str, int], w: Window) -> Emit:
        asset, interval, start = key
        w.revision += 1
        if w.revision == 0:
            self.final_by_day.setdefault(start - start % DAY_MS, set()).add(key)
        fg = self.fear_greed.get(start - start % DAY_MS)
        w.emitted_fg = fg[0] if fg else None
        n = w.items
        agg = SentimentAggregate(
            asset=asset,
            interval=interval,
            window_start=start,
            window_end=start + INTERVALS_MS[interval] - 1,
            items=n,
            mean_score=round(w.score_sum / n, 6) if n else 0.0,
            positive_share=round(w.positive / n, 6) if n else 0.0,
            negative_share=round(w.negative / n, 6) if n else 0.0,
            neutral_share=round(w.neutral / n, 6) if n else 0.0,
            engagement=w.engagement,
            weighted_score=round(w.weighted_sum / w.engagement, 6) if w.engagement > 0 else None,
            fear_greed_value=fg[0] if fg else None,
            fear_greed_class=fg[1] if fg else None,
            is_final=True,
            revision=w.revision,
        )
        return Emit("sentiment_aggregate", agg.key, agg)


def _logic(ctx: AgentContext) -> SentimentLogic:
    s = ctx.settings.agents
    return SentimentLogic(s.sentiment_lateness_ms, s.sentiment_grace_ms, s.sentiment_idle_timeout_s)


SPEC = AgentSpec(
    name="sentiment",
    inputs=("news_scored", "fear_greed"),
    outputs=("sentiment_aggregate",),
    logic=_logic,
    timer_s=1.0,
    description="Scored news and the Fear & Greed index into per-asset 1h and 1d sentiment windows",
)
