"""Event-time OHLCV candles of one Kafka partition: a pure state machine (no I/O, no clock).

The candle agent (agents.candle_agent) feeds each ``TradeBatch`` to :meth:`CandleBook.add` and publishes what comes back;
everything that decides a number lives here so it can be tested against exchange klines.

Time model. Windows are aligned to the UTC epoch (``open_time = t - t % interval``, so 1d starts at
00:00 UTC) and ``close_time`` is the window's last millisecond, as in exchange klines. The book's
watermark is the highest trade time it has seen (ms) minus ``lateness_ms``; it moves per trade, so
finalization does not depend on how trades were cut into batches. A window is final once the
watermark reaches its end (``close_time + 1``) and is then emitted once, ``revision=0``.

Late data. A trade whose 1m window is final but whose end + ``grace_ms`` the watermark has not
reached yet revises that window: the minute and every higher window containing it are re-emitted
with ``revision + 1``. Revisions are coalesced (one re-emission per window, at the end of the
:meth:`CandleBook.add` call or before the watermark next finalizes something, whichever is first)
so a back-fill burst does not flood the sinks; the values never depend on batching. A trade later
than that is returned as a ``LateTrade``. Duplicate trade ids are remembered per symbol only while
their window can still be revised, which bounds memory; an older duplicate is late anyway.

Gaps (``fill_gaps``). A minute without trades after a symbol's first traded minute gets a flat
candle at the previous close (volume 0, ``taker_buy_volume`` 0.0 if the previous minute knew sides,
else None), as exchange klines do for a quiet symbol, for at most ``max_fill_minutes`` after the
symbol's last traded minute (a stale symbol or a clock jump must not emit millions of candles; the
symbol resumes with its next trade). No flat candle precedes a symbol's first traded minute, also
when that minute arrives late (flat minutes then follow it). A late minute that lands before minutes
the symbol already had is emitted alone: the flat minutes between are not back-filled (rare, as it
needs a symbol's start to arrive out of order by more than the lateness and a minute). A revision
landing in a flat minute rewrites only that minute: the flat candles already emitted after it keep
their price, as exchange klines are not rewritten either; flat candles emitted later continue from
the revised close.

Roll-ups. Higher intervals aggregate final 1m candles (flat ones included): open/close and trade
ids from the first/last minute with trades, high/low over traded minutes, sums over all; a window
with no traded minute is flat at its first minute's price. Each keeps an incremental aggregate, not
its minutes: a revision only adds trades to a minute, so the trade itself is added to the higher
window and only its open/close is taken from the revised minute when that minute is the window's
first/last traded one. Float sums add in arrival (minute) order, so output is deterministic.

Emission order: final 1m candles in time order per symbol, each followed by the higher-interval
candles that became final with it; symbols in the order the book first saw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.intervals import MINUTE_MS, parse_interval
from schemas.models import Candle, LateTrade, Trade

SNAPSHOT_VERSION = 2  # 2: trade ids as runs (TradeIds); 1 (plain id lists) still restores

# "No time yet" sentinels are ints so that snapshots stay plain JSON.
_FAR = 1 << 62
_NEVER = -(1 << 62)
_INF = float("inf")

# Slots of a window aggregate (a list, for speed). For 1m windows the open/close keys are trade times
# (µs); for higher windows they are the open times (ms) of the first/last traded minute.
O_KEY, O_PX, O_ID, C_KEY, C_PX, C_ID, HI, LO, VOL, QUOTE, COUNT, BUY, HAS, FLAT, REV, IDS = range(16)
_CORE = 13  # slots 0..12 are what the hot loop keeps in local variables


@dataclass(frozen=True)
class CandleConfig:
    intervals: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h", "1d")  # emitted; 1m is always built (base of roll-ups)
    lateness_ms: int = 2000  # watermark = highest trade time seen in the book - lateness
    grace_ms: int = 60_000  # a final window may still be revised until watermark >= window end + grace
    fill_gaps: bool = True  # flat candles for minutes without trades, as exchange klines have
    max_fill_minutes: int = 7 * 1440  # flat candles after a symbol's last traded minute, at most

    def __post_init__(self) -> None:
        object.__setattr__(self, "intervals", tuple(self.intervals))  # settings hand over a list
        if not self.intervals:
            raise ValueError("no candle interval configured")
        if len({parse_interval(name) for name in self.intervals}) != len(self.intervals):
            raise ValueError(f"intervals {self.intervals} name the same interval twice")
        for name in ("lateness_ms", "grace_ms", "max_fill_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class BookOutput:
    candles: list[Candle] = field(default_factory=list)  # final candles and revisions (is_final=True), in emission order
    late: list[LateTrade] = field(default_factory=list)  # trades later than grace
    duplicates: int = 0  # trades skipped because their id was already counted
    dirty: set[tuple[str, str]] = field(default_factory=set)  # (exchange, symbol) whose forming candles changed (all intervals change together)


class _Symbol:
    """Window state of one (exchange, symbol)."""

    __slots__ = (
        "exchange", "symbol", "ident", "ids", "open1m", "final1m", "open_h", "final_h",
        "frontier", "last_traded_end", "last_close", "last_has", "due",
    )

    def __init__(self, exchange: str, symbol: str, n_higher: int) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.ident = (exchange, symbol)
        self.ids: set[str] = set()  # trade ids of every retained (open or revisable) 1m window, for dedupe
        self.open1m: dict[int, list] = {}
        self.final1m: dict[int, list] = {}  # final minutes still within grace (flat ones too)
        self.open_h: list[dict[int, list]] = [{} for _ in range(n_higher)]
        self.final_h: list[dict[int, list]] = [{} for _ in range(n_higher)]
        self.frontier: int | None = None  # every minute before it has been finalized (forward)
        self.last_traded_end = _NEVER  # end of the last forward-finalized minute with trades
        self.last_close: float | None = None
        self.last_has = False
        self.due = _FAR  # earliest watermark at which this symbol has work (finalize or expire)


def _canonical(tid: str) -> bool:
    """An id that is exactly ``str(int(tid))`` and fits JSON's int64."""
    return type(tid) is str and tid.isascii() and tid.isdigit() and len(tid) < 19 and (tid[0] != "0" or tid == "0")


class TradeIds(list):
    """The trade ids of one 1m window (a plain list to the hot loop; in arrival order, except that a
    restore puts the numbered ones first: only membership counts), plus its checkpoint form kept up
    to date incrementally.

    At 20,000 trades/s a partition's windows within grace hold over a million ids: written out in
    full, a checkpoint was about 20 MB of JSON every 2 s. Exchanges number trades consecutively per
    symbol, so the ids compress to runs of consecutive integers, ``[first, count, ...]``; ids that
    are not canonical decimal integers below 10**18 (UUIDs, leading zeros) stay strings in ``other``.
    The list only grows (a window is dropped whole), so each checkpoint encodes just the ids added
    since the last one.
    """

    __slots__ = ("encoded", "runs", "other")

    def __init__(self) -> None:
        super().__init__()
        self.encoded = 0  # ids[:encoded] are in runs/other
        self.runs: list[int] = []
        self.other: list[str] = []

    def checkpoint(self) -> list[list]:
        """``[runs, other]``, copies (the snapshot must not change with the book)."""
        if self.encoded < len(self):
            self._encode()
        return [self.runs.copy(), self.other.copy()]

    def _encode(self) -> None:
        runs, other = self.runs, self.other
        new = self[self.encoded :]
        self.encoded = len(self)
        if _canonical(new[0]) and _canonical(new[-1]):  # the usual case, one consecutive stretch, at C speed
            lo, hi = int(new[0]), int(new[-1])
            if hi - lo + 1 == len(new) and new == list(map(str, range(lo, hi + 1))):
                if runs and runs[-2] + runs[-1] == lo:
                    runs[-1] += len(new)
                else:
                    runs += (lo, len(new))
                return
        nxt = runs[-2] + runs[-1] if runs else None
        expected = str(nxt) if runs else None
        for tid in new:
            if tid == expected:
                runs[-1] += 1
            elif _canonical(tid):
                nxt = int(tid)
                runs += (nxt, 1)
            else:
                other.append(tid)
                continue
            nxt += 1
            expected = str(nxt)

    @classmethod
    def restore(cls, form: list) -> TradeIds:
        """From :meth:`checkpoint`'s form, or a plain id list (snapshot version 1)."""
        ids = cls()
        if form and isinstance(form[0], list):
            runs, other = form
            for i in range(0, len(runs), 2):
                ids.extend(map(str, range(runs[i], runs[i] + runs[i + 1])))
            ids.extend(other)
            ids.runs, ids.other, ids.encoded = list(runs), list(other), len(ids)
        else:
            ids.extend(form)
        return ids


def _new_agg(flat: float | None, has: bool, rev: int, ids: TradeIds | None) -> list:
    return [_FAR, None, None, -1, None, None, -_INF, _INF, 0.0, 0.0, 0, 0.0, has, flat, rev, ids]


def _absorb(a: list, tid: str, ts: int, px: float, amt: float, side: str) -> None:
    """Add one trade to a 1m aggregate (the hot loop does the same on local variables)."""
    if ts < a[O_KEY]:
        a[O_KEY] = ts
        a[O_PX] = px
        a[O_ID] = tid
    if ts >= a[C_KEY]:
        a[C_KEY] = ts
        a[C_PX] = px
        a[C_ID] = tid
    if px > a[HI]:
        a[HI] = px
    if px < a[LO]:
        a[LO] = px
    a[VOL] += amt
    a[QUOTE] += px * amt
    a[COUNT] += 1
    if side == "buy":
        a[BUY] += amt
        a[HAS] = True
    elif side == "sell":
        a[HAS] = True
    a[IDS].append(tid)


def _roll_minute(h: list, m: int, a: list) -> None:
    """Add final minute ``m`` (aggregate ``a``) to a higher window's aggregate ``h``."""
    h[VOL] += a[VOL]
    h[QUOTE] += a[QUOTE]
    h[BUY] += a[BUY]
    if a[HAS]:
        h[HAS] = True
    n = a[COUNT]
    if n:
        h[COUNT] += n
        if a[HI] > h[HI]:
            h[HI] = a[HI]
        if a[LO] < h[LO]:
            h[LO] = a[LO]
        if m < h[O_KEY]:
            h[O_KEY] = m
            h[O_PX] = a[O_PX]
            h[O_ID] = a[O_ID]
        if m >= h[C_KEY]:
            h[C_KEY] = m
            h[C_PX] = a[C_PX]
            h[C_ID] = a[C_ID]


def _roll_trade(h: list, m: int, a: list, px: float, amt: float, side: str) -> None:
    """Add a revising trade of minute ``m`` (already absorbed into ``a``) to a higher window."""
    h[VOL] += amt
    h[QUOTE] += px * amt
    h[COUNT] += 1
    if side == "buy":
        h[BUY] += amt
        h[HAS] = True
    elif side == "sell":
        h[HAS] = True
    if px > h[HI]:
        h[HI] = px
    if px < h[LO]:
        h[LO] = px
    if m <= h[O_KEY]:
        h[O_KEY] = m
        h[O_PX] = a[O_PX]
        h[O_ID] = a[O_ID]
    if m >= h[C_KEY]:
        h[C_KEY] = m
        h[C_PX] = a[C_PX]
        h[C_ID] = a[C_ID]


def _candle(ex: str, sym: str, name: str, start: int, iv: int, a: list, final: bool, rev: int) -> Candle:
    buy = a[BUY] if a[HAS] else None
    if a[COUNT]:
        vol = a[VOL]
        return Candle(
            ex, sym, name, start, start + iv - 1, a[O_PX], a[HI], a[LO], a[C_PX], vol, a[QUOTE], a[COUNT],
            a[QUOTE] / vol if vol else None, buy, a[O_ID], a[C_ID], final, rev,
        )
    p = a[FLAT]
    return Candle(ex, sym, name, start, start + iv - 1, p, p, p, p, a[VOL], a[QUOTE], 0, None, buy, None, None, final, rev)


def _iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _enc(a: list) -> list:
    """An aggregate as JSON (the ±inf high/low of a window without trades become null)."""
    e = list(a)
    if not a[COUNT]:
        e[HI] = e[LO] = None
    if a[IDS] is not None:
        e[IDS] = a[IDS].checkpoint()
    return e


def _dec(e: list) -> list:
    a = list(e)
    if not a[COUNT]:
        a[HI] = -_INF
        a[LO] = _INF
    if a[IDS] is not None:
        a[IDS] = TradeIds.restore(a[IDS])
    return a


class CandleBook:
    """All window state of one Kafka partition (many symbols)."""

    def __init__(self, config: CandleConfig) -> None:
        self.config = config
        by_ms = {parse_interval(n): n for n in config.intervals}
        self._name_1m = by_ms.get(MINUTE_MS)  # None: 1m is built for the roll-ups but not emitted
        self._names = tuple(by_ms[ms] for ms in sorted(by_ms))
        self._higher = tuple((by_ms[ms], ms) for ms in sorted(by_ms) if ms != MINUTE_MS)
        self._lateness = config.lateness_ms
        self._grace = config.grace_ms
        self._fill = config.fill_gaps
        self._fill_ms = config.max_fill_minutes * MINUTE_MS
        self._syms: dict[tuple[str, str], _Symbol] = {}
        self._max_ts = _NEVER  # highest trade time seen, µs
        self._due_ms = _FAR  # earliest watermark (ms) at which some symbol has work
        self._due_ts = _FAR  # the same as a highest-trade time in µs, for the hot loop
        self._out: BookOutput | None = None
        self._pending: list[tuple[_Symbol, int, int, list]] = []  # revised final windows not emitted yet
        self._pending_ids: set[int] = set()

    # ------------------------------------------------------------------ public API

    @property
    def watermark_ms(self) -> int | None:
        return None if self._max_ts == _NEVER else self._max_ts // 1000 - self._lateness

    def add(self, exchange: str, symbol: str, trades: Sequence[Trade]) -> BookOutput:
        """Absorb one symbol's batch of trades; return what became final, was revised, late or duplicate."""
        out = BookOutput()
        if not trades:
            return out
        self._out = out
        st = self._syms.get((exchange, symbol))
        if st is None:
            st = self._syms[(exchange, symbol)] = _Symbol(exchange, symbol, len(self._higher))
        ids = st.ids
        ids_add = ids.add
        locate = self._locate
        maxts = self._max_ts
        due_ts = self._due_ts
        dups = 0
        touched = False
        agg: list | None = None
        lo_us = hi_us = 0
        o_ts = o_px = o_id = c_ts = c_px = c_id = hi = lo = vol = quote = cnt = buy = has = None
        cids_append = None
        for t in trades:
            tid, ts, px, amt, side = t
            if tid in ids:
                dups += 1
                continue
            if ts >= hi_us or ts < lo_us:
                if agg is not None:
                    agg[:_CORE] = (o_ts, o_px, o_id, c_ts, c_px, c_id, hi, lo, vol, quote, cnt, buy, has)
                self._max_ts = maxts
                agg = locate(st, tid, ts, px, amt, side)
                due_ts = self._due_ts
                if agg is None:
                    lo_us = hi_us = 0
                    continue
                touched = True
                lo_us = ts // 1000
                lo_us = (lo_us - lo_us % MINUTE_MS) * 1000
                hi_us = lo_us + MINUTE_MS * 1000
                o_ts, o_px, o_id, c_ts, c_px, c_id, hi, lo, vol, quote, cnt, buy, has = agg[:_CORE]
                cids_append = agg[IDS].append
            ids_add(tid)
            cids_append(tid)
            if ts < o_ts:
                o_ts = ts
                o_px = px
                o_id = tid
            if ts >= c_ts:
                c_ts = ts
                c_px = px
                c_id = tid
            if px > hi:
                hi = px
            if px < lo:
                lo = px
            vol += amt
            quote += px * amt
            cnt += 1
            if side == "buy":
                buy += amt
                has = True
            elif side == "sell":
                has = True
            if ts > maxts:
                maxts = ts
                if ts >= due_ts:
                    agg[:_CORE] = (o_ts, o_px, o_id, c_ts, c_px, c_id, hi, lo, vol, quote, cnt, buy, has)
                    self._max_ts = maxts
                    self._advance()
                    due_ts = self._due_ts
        if agg is not None:
            agg[:_CORE] = (o_ts, o_px, o_id, c_ts, c_px, c_id, hi, lo, vol, quote, cnt, buy, has)
        self._max_ts = maxts
        self._flush_revisions()
        out.duplicates = dups
        if touched:
            out.dirty.add(st.ident)
        self._out = None
        return out

    def forming(self, exchange: str, symbol: str) -> list[Candle]:
        """The symbol's in-progress candle of every interval that has one, shortest interval first:
        what :meth:`in_progress` gives per interval, in one pass (this runs for every update sent)."""
        st = self._syms.get((exchange, symbol))
        if st is None:
            return []
        minutes = sorted(st.open1m)
        out = []
        if minutes and self._name_1m is not None:
            out.append(_candle(exchange, symbol, self._name_1m, minutes[-1], MINUTE_MS, st.open1m[minutes[-1]], False, 0))
        for k in range(len(self._higher)):
            candle = self._forming_higher(st, k, minutes)
            if candle is not None:
                out.append(candle)
        return out

    def in_progress(self, exchange: str, symbol: str, interval: str) -> Candle | None:
        """The current non-final window of an interval (for higher ones: its final minutes plus the live ones)."""
        iv = parse_interval(interval)
        st = self._syms.get((exchange, symbol))
        if st is None:
            return None
        open1m = st.open1m
        if iv == MINUTE_MS:
            if not open1m:
                return None
            m = max(open1m)
            return _candle(exchange, symbol, self._name_1m or interval, m, MINUTE_MS, open1m[m], False, 0)
        k = next((i for i, (_, v) in enumerate(self._higher) if v == iv), None)
        if k is None:
            raise ValueError(f"interval {interval!r} is not built by this book (intervals {self._names})")
        return self._forming_higher(st, k, sorted(open1m))

    def _forming_higher(self, st: _Symbol, k: int, minutes: list[int]) -> Candle | None:
        """Higher interval ``k``'s current window: its final minutes (rolled up already) plus the
        open ones, ``minutes`` being the symbol's open 1m windows in order."""
        name, iv = self._higher[k]
        opened = st.open_h[k]
        if minutes:
            start = minutes[-1] - minutes[-1] % iv
        elif opened:
            start = max(opened)
        else:
            return None
        base = opened.get(start)
        h = list(base) if base is not None else _new_agg(None, False, 0, None)
        for m in minutes:
            if start <= m < start + iv:
                _roll_minute(h, m, st.open1m[m])
        return _candle(st.exchange, st.symbol, name, start, iv, h, False, 0)

    def close_open_windows(self) -> BookOutput:
        """Finalize every open 1m window now (idle timeout) by moving the watermark to the end of the latest.

        Higher windows become final only if that watermark passes their end; a partly covered 1d
        window stays open. Later trades for the closed windows are revisions within grace.
        """
        out = BookOutput()
        target = max((max(st.open1m) + MINUTE_MS for st in self._syms.values() if st.open1m), default=None)
        if target is None:
            return out
        self._out = out
        need = (target + self._lateness) * 1000
        if need > self._max_ts:
            self._max_ts = need
        self._advance()
        self._flush_revisions()
        self._out = None
        return out

    def open_windows(self) -> int:
        """Open (symbol, interval, window) states: live 1m windows and partly rolled-up higher ones."""
        return sum(len(st.open1m) + sum(len(d) for d in st.open_h) for st in self._syms.values())

    def snapshot(self) -> dict[str, Any]:
        """Complete state as plain JSON types (orjson round-trips floats exactly)."""
        return {
            "version": SNAPSHOT_VERSION,
            "intervals": list(self._names),
            "max_ts": self._max_ts,
            "symbols": [
                {
                    "exchange": st.exchange,
                    "symbol": st.symbol,
                    "frontier": st.frontier,
                    "last_traded_end": st.last_traded_end,
                    "last_close": st.last_close,
                    "last_has": st.last_has,
                    "open1m": [[m, _enc(a)] for m, a in st.open1m.items()],
                    "final1m": [[m, _enc(a)] for m, a in st.final1m.items()],
                    "open_h": [[[s, _enc(a)] for s, a in d.items()] for d in st.open_h],
                    "final_h": [[[s, _enc(a)] for s, a in d.items()] for d in st.final_h],
                }
                for st in self._syms.values()
            ],
        }

    @classmethod
    def restore(cls, config: CandleConfig, snap: dict[str, Any]) -> CandleBook:
        """A book that continues exactly where the one that took ``snap`` stopped."""
        book = cls(config)
        if snap.get("version") not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"candle snapshot version {snap.get('version')!r}, expected 1 or {SNAPSHOT_VERSION}")
        if list(snap["intervals"]) != list(book._names):
            raise ValueError(f"candle snapshot has intervals {snap['intervals']}, config builds {list(book._names)}")
        book._max_ts = snap["max_ts"]
        for s in snap["symbols"]:
            st = _Symbol(s["exchange"], s["symbol"], len(book._higher))
            st.frontier = s["frontier"]
            st.last_traded_end = s["last_traded_end"]
            st.last_close = s["last_close"]
            st.last_has = s["last_has"]
            st.open1m = {m: _dec(a) for m, a in s["open1m"]}
            st.final1m = {m: _dec(a) for m, a in s["final1m"]}
            st.open_h = [{start: _dec(a) for start, a in d} for d in s["open_h"]]
            st.final_h = [{start: _dec(a) for start, a in d} for d in s["final_h"]]
            for a in (*st.open1m.values(), *st.final1m.values()):
                st.ids.update(a[IDS])
            st.due = book._symbol_due(st)
            book._syms[(st.exchange, st.symbol)] = st
        book._refresh_due()
        return book

    # ------------------------------------------------------------------ internals

    def _locate(self, st: _Symbol, tid: str, ts: int, px: float, amt: float, side: str) -> list | None:
        """The open 1m aggregate for a trade, creating it; or None after handling a final window's trade."""
        ms = ts // 1000
        m = ms - ms % MINUTE_MS
        a = st.open1m.get(m)
        if a is not None:
            return a
        end = m + MINUTE_MS
        wm = self._max_ts // 1000 - self._lateness
        if end > wm:
            a = st.open1m[m] = _new_agg(None, False, 0, TradeIds())
            self._lower_due(st, end)
            return a
        if wm < end + self._grace:
            self._revise(st, m, wm, tid, ts, px, amt, side)
            if self._due_ts <= self._max_ts:  # the minute started the symbol: flat minutes after it are due
                self._advance()
            return None
        out = self._out
        assert out is not None
        out.late.append(
            LateTrade(
                st.exchange,
                st.symbol,
                Trade(tid, ts, px, amt, side),
                f"1m window {_iso(m)} is closed: watermark {_iso(wm)} passed its end {_iso(end)} + grace {self._grace} ms",
                wm * 1000,
            )
        )
        return None

    def _revise(self, st: _Symbol, m: int, wm: int, tid: str, ts: int, px: float, amt: float, side: str) -> None:
        """Add a trade to final minute ``m`` and to every higher window containing it."""
        grace = self._grace
        a = st.final1m.get(m)
        if a is None:  # never emitted: before the symbol's first minute, or not gap-filled
            a = st.final1m[m] = _new_agg(None, False, -1, TradeIds())
            self._lower_due(st, m + MINUTE_MS + grace)
        elif not a[COUNT]:
            a[HAS] = False  # a flat minute's sides came from the minute before; now its own trades count
        _absorb(a, tid, ts, px, amt, side)
        st.ids.add(tid)
        self._mark(st, -1, m, a)
        out = self._out
        assert out is not None
        out.dirty.add(st.ident)
        if st.frontier is None or m >= st.frontier:
            # The symbol's first minute (or the first after a dormant stretch) came late: start here.
            st.frontier = st.last_traded_end = m + MINUTE_MS
            st.last_close = a[C_PX]
            st.last_has = a[HAS]
        elif m + MINUTE_MS >= st.last_traded_end:
            # Flat minutes not emitted yet continue from the revised close, as the exchange's would.
            st.last_traded_end = m + MINUTE_MS
            st.last_close = a[C_PX]
            if m + MINUTE_MS == st.frontier:
                st.last_has = a[HAS]
        if self._filling(st):
            self._lower_due(st, st.frontier + MINUTE_MS)
        for k, (_, iv) in enumerate(self._higher):
            start = m - m % iv
            if start + iv <= wm:
                windows = st.final_h[k]
                h = windows.get(start)
                if h is None:  # a final higher window that had no minute at all was never emitted
                    h = windows[start] = _new_agg(None, False, -1, None)
                    self._lower_due(st, start + iv + grace)
                self._mark(st, k, start, h)
            else:
                windows = st.open_h[k]
                h = windows.get(start)
                if h is None:
                    h = windows[start] = _new_agg(None, False, 0, None)
                    self._lower_due(st, start + iv)
            _roll_trade(h, m, a, px, amt, side)

    def _mark(self, st: _Symbol, k: int, start: int, a: list) -> None:
        if id(a) not in self._pending_ids:
            self._pending_ids.add(id(a))
            self._pending.append((st, k, start, a))

    def _flush_revisions(self) -> None:
        """Emit the windows revised since the last flush, once each (before the watermark moves on)."""
        if not self._pending:
            return
        out = self._out
        assert out is not None
        for st, k, start, a in self._pending:
            a[REV] += 1
            if k < 0:
                if self._name_1m:
                    out.candles.append(_candle(st.exchange, st.symbol, self._name_1m, start, MINUTE_MS, a, True, a[REV]))
            else:
                name, iv = self._higher[k]
                out.candles.append(_candle(st.exchange, st.symbol, name, start, iv, a, True, a[REV]))
        self._pending.clear()
        self._pending_ids.clear()

    def _lower_due(self, st: _Symbol, due: int) -> None:
        if due < st.due:
            st.due = due
            if due < self._due_ms:
                self._due_ms = due
                self._due_ts = (due + self._lateness) * 1000

    def _refresh_due(self) -> None:
        self._due_ms = min((st.due for st in self._syms.values()), default=_FAR)
        self._due_ts = _FAR if self._due_ms == _FAR else (self._due_ms + self._lateness) * 1000

    def _advance(self) -> None:
        """Do every symbol's work that the current watermark has made due."""
        self._flush_revisions()
        wm = self._max_ts // 1000 - self._lateness
        for st in self._syms.values():
            if st.due <= wm:
                self._process(st, wm)
        self._refresh_due()

    def _filling(self, st: _Symbol) -> bool:
        return self._fill and st.frontier is not None and st.frontier - st.last_traded_end < self._fill_ms

    def _process(self, st: _Symbol, wm: int) -> None:
        """Finalize this symbol's minutes (traded or flat) and higher windows up to ``wm``, in time order."""
        out = self._out
        assert out is not None
        candles = out.candles
        ex, sym = st.exchange, st.symbol
        open1m = st.open1m
        while True:
            if self._filling(st):
                m = st.frontier
            elif open1m:
                m = min(open1m)
            else:
                m = None
            if m is not None and m + MINUTE_MS > wm:
                m = None
            self._close_higher(st, wm if m is None else m)
            if m is None:
                break
            a = open1m.pop(m, None)
            if a is None:
                a = _new_agg(st.last_close, st.last_has, 0, TradeIds())
            else:
                st.last_close = a[C_PX]
                st.last_traded_end = m + MINUTE_MS
            st.last_has = a[HAS]
            st.frontier = m + MINUTE_MS
            st.final1m[m] = a
            if self._name_1m:
                candles.append(_candle(ex, sym, self._name_1m, m, MINUTE_MS, a, True, 0))
            for k, (_, iv) in enumerate(self._higher):
                start = m - m % iv
                h = st.final_h[k].get(start)
                if h is not None:  # only when catching up after a symbol's late first minute
                    if a[COUNT] or (a[HAS] and not h[HAS]):
                        self._mark(st, k, start, h)
                else:
                    windows = st.open_h[k]
                    h = windows.get(start)
                    if h is None:
                        h = windows[start] = _new_agg(a[C_PX] if a[COUNT] else a[FLAT], False, 0, None)
                _roll_minute(h, m, a)
        self._expire(st, wm)
        st.due = self._symbol_due(st)
        out.dirty.add(st.ident)

    def _close_higher(self, st: _Symbol, limit: int) -> None:
        """Emit the open higher windows that end at or before ``limit``, by end time then interval."""
        due = [
            (start + iv, k, start)
            for k, (_, iv) in enumerate(self._higher)
            for start in st.open_h[k]
            if start + iv <= limit
        ]
        if not due:
            return
        due.sort()
        out = self._out
        assert out is not None
        for _, k, start in due:
            name, iv = self._higher[k]
            h = st.open_h[k].pop(start)
            st.final_h[k][start] = h
            out.candles.append(_candle(st.exchange, st.symbol, name, start, iv, h, True, 0))

    def _expire(self, st: _Symbol, wm: int) -> None:
        """Forget final windows past their grace (and the trade ids kept for duplicate detection)."""
        horizon = wm - self._grace
        gone = [m for m in st.final1m if m + MINUTE_MS <= horizon]
        for m in gone:
            st.ids.difference_update(st.final1m.pop(m)[IDS])
        for k, (_, iv) in enumerate(self._higher):
            windows = st.final_h[k]
            for start in [s for s in windows if s + iv <= horizon]:
                del windows[start]

    def _symbol_due(self, st: _Symbol) -> int:
        due = _FAR
        if st.open1m:
            due = min(st.open1m) + MINUTE_MS
        if self._filling(st):
            due = min(due, st.frontier + MINUTE_MS)
        if st.final1m:
            due = min(due, min(st.final1m) + MINUTE_MS + self._grace)
        for k, (_, iv) in enumerate(self._higher):
            if st.open_h[k]:
                due = min(due, min(st.open_h[k]) + iv)
            if st.final_h[k]:
                due = min(due, min(st.final_h[k]) + iv + self._grace)
        return due
