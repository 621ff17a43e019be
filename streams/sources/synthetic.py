"""A seeded, realistic synthetic trade stream for demos, tests and benchmarks.

``generate_trades`` is a pure generator (no asyncio, no wall clock apart from the default start
time): event time advances with a bursty arrival process, so a seed always gives the same
trades however fast they are consumed. ``SyntheticSource`` paces and micro-batches it.

Model, per symbol: a geometric random walk with its own start price (log-uniform 0.01..50,000),
volatility and calm/turbulent volatility regimes; trade prices on a tick grid at the bid or ask
(so prices repeat, as on a real book), log-normal sizes on a lot grid, buy/sell runs. Arrivals:
Poisson with market-wide rate spikes, spread over symbols with a Zipf-like share.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from bisect import bisect
from collections.abc import AsyncIterator, Iterator

import structlog

from schemas.models import Trade
from streams.sources.base import MicroBatcher, Source, SourceItem, now_us

log = structlog.get_logger(__name__)

# Mean event-time rate over all symbols, spikes included; equal to the default pace so that
# event time keeps up with the wall clock at the default ``rate``.
MEAN_EVENT_RATE = 1000.0
_CALM_S, _SPIKE_S, _SPIKE_X = 60.0, 3.0, 8.0  # mean durations of the market regimes, spike rate multiplier
_CALM_RATE_PER_US = MEAN_EVENT_RATE * (_CALM_S + _SPIKE_S) / (_CALM_S + _SPIKE_X * _SPIKE_S) / 1e6
_ZIPF_S = 1.1
_VOL_CALM_S, _VOL_BURST_S = 300.0, 30.0  # mean durations of a symbol's volatility regimes
_SAME_SIDE = 0.4  # chance a trade repeats its predecessor's side on top of the coin flip
_SWAP_WINDOW_US = 1_000_000  # out-of-order trades trail their neighbour by at most this
_RESEND_MAX = 50  # a duplicate is re-sent within this many trades
_MIN_SLEEP_S = 0.001
_new_trade = tuple.__new__  # Trade(...) through its Python __new__ costs a third of the generation time


def symbol_names(symbols: int | list[str]) -> list[str]:
    if isinstance(symbols, int):
        if symbols < 1:
            raise ValueError(f"need at least one symbol, got {symbols}")
        return [f"SYN{i}/USDT" for i in range(symbols)]
    if not symbols or len(set(symbols)) != len(symbols):
        raise ValueError(f"symbols must be a non-empty list of distinct names, got {symbols!r}")
    return list(symbols)


def generate_trades(
    symbols: int | list[str] = 10,
    *,
    seed: int = 42,
    limit: int | None = None,
    start_us: int | None = None,
    out_of_order: float = 0.0,
    duplicates: float = 0.0,
    late: float = 0.0,
    late_ms: int = 120_000,
    event_rate: float = MEAN_EVENT_RATE,
) -> Iterator[tuple[str, Trade]]:
    """``(symbol, Trade)`` in emission order: ``limit`` distinct trades (None = forever) plus re-sent duplicates.

    Disorder, drawn from a second seeded generator so the underlying trades do not change:
    ``out_of_order`` of the trades are emitted after their symbol's next trade (if that comes within
    a second), ``duplicates`` are re-sent unchanged up to 50 trades later, ``late`` are
    re-timestamped ``late_ms`` into the past (their id unchanged, so still unique).
    """
    _check_options(limit, out_of_order, duplicates, late)
    trades = _market(symbol_names(symbols), random.Random(seed), now_us() if start_us is None else start_us, event_rate)
    if limit is not None:
        trades = itertools.islice(trades, limit)
    if out_of_order or duplicates or late:
        trades = _disorder(trades, random.Random(f"disorder-{seed}"), out_of_order, duplicates, late, late_ms * 1000)
    return trades


def _check_options(limit: int | None, out_of_order: float, duplicates: float, late: float) -> None:
    for name, frac in (("out_of_order", out_of_order), ("duplicates", duplicates), ("late", late)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {frac!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit!r}")


def _market(names: list[str], rng: random.Random, start_us: int, event_rate: float) -> Iterator[tuple[str, Trade]]:
    """The endless, time-ordered trade stream of all symbols."""
    n = len(names)
    share = list(itertools.accumulate(1.0 / (i + 1) ** _ZIPF_S for i in range(n)))
    cum = [c / share[-1] for c in share[:-1]]  # bisect on these picks a symbol with its Zipf share
    mid, sigma, ask, bid, pdec, tick, size_mu, size_sigma, qdec, lot = ([] for _ in range(10))
    for _ in range(n):
        p0 = math.exp(rng.uniform(math.log(0.01), math.log(50_000.0)))
        digits = max(0, 5 - math.floor(math.log10(p0)))  # about six significant digits of price
        q = min(8, max(0, math.ceil(math.log10(p0)) + 1))  # a lot is worth about 0.1 to 1 USDT
        mid.append(p0)
        sigma.append(rng.uniform(0.01, 0.08) / math.sqrt(86_400e6))  # daily vol 1-8 %, per sqrt(µs)
        pdec.append(digits)
        tick.append(10.0**-digits)
        half_spread = rng.uniform(0.5, 3.0) * 10.0**-digits / p0
        ask.append(1.0 + half_spread)
        bid.append(1.0 - half_spread)
        size_mu.append(math.log(rng.uniform(20.0, 500.0) / p0))  # median trade 20-500 USDT
        size_sigma.append(rng.uniform(1.0, 1.6))
        qdec.append(q)
        lot.append(10.0**-q)
    next_id = [rng.randrange(1_000_000, 1_000_000_000) for _ in range(n)]
    last_t = [0.0] * n
    last_side = ["buy"] * n
    vol = sigma.copy()  # sigma times the current regime's multiplier
    vol_end = [rng.expovariate(1.0 / _VOL_CALM_S) * 1e6 for _ in range(n)]

    random_, expo, gauss, exp, sqrt = rng.random, rng.expovariate, rng.gauss, math.exp, math.sqrt
    calm_rate = _CALM_RATE_PER_US * event_rate / MEAN_EVENT_RATE
    rate = calm_rate
    spike = False
    regime_end = expo(1.0 / _CALM_S) * 1e6
    t = 0.0  # µs since start_us
    while True:
        t += expo(rate)
        if t >= regime_end:
            spike = not spike
            rate = calm_rate * _SPIKE_X if spike else calm_rate
            regime_end = t + expo(1.0 / (_SPIKE_S if spike else _CALM_S)) * 1e6
        i = bisect(cum, random_())
        if t >= vol_end[i]:
            burst = vol[i] == sigma[i]
            vol[i] = sigma[i] * rng.uniform(2.5, 6.0) if burst else sigma[i]
            vol_end[i] = t + expo(1.0 / (_VOL_BURST_S if burst else _VOL_CALM_S)) * 1e6
        m = mid[i] * exp(vol[i] * sqrt(t - last_t[i]) * gauss())
        mid[i] = m
        last_t[i] = t
        u = random_()
        side = last_side[i] if u < _SAME_SIDE else ("buy" if u < 0.5 + _SAME_SIDE / 2 else "sell")
        last_side[i] = side
        px = round(m * (ask[i] if side == "buy" else bid[i]), pdec[i]) or tick[i]
        qty = round(exp(size_mu[i] + size_sigma[i] * gauss()), qdec[i]) or lot[i]
        tid = next_id[i]
        next_id[i] = tid + 1
        yield names[i], _new_trade(Trade, (str(tid), start_us + int(t), px, qty, side))


def _disorder(
    trades: Iterator[tuple[str, Trade]], rng: random.Random, out_of_order: float, duplicates: float, late: float, late_us: int
) -> Iterator[tuple[str, Trade]]:
    held: dict[str, Trade] = {}  # per symbol, a trade waiting to be emitted after the symbol's next one
    resend: list[tuple[int, int, str, Trade]] = []  # heap of (due emission count, seq, symbol, trade)
    emitted = 0

    def emit(symbol: str, trade: Trade) -> Iterator[tuple[str, Trade]]:
        nonlocal emitted
        yield symbol, trade
        emitted += 1
        if duplicates and rng.random() < duplicates:
            heapq.heappush(resend, (emitted + rng.randint(1, _RESEND_MAX), emitted, symbol, trade))
        while resend and resend[0][0] <= emitted:
            _, _, s, t = heapq.heappop(resend)
            yield s, t

    for symbol, trade in trades:
        if late and rng.random() < late:
            trade = trade._replace(ts=trade.ts - late_us)
        if held:
            for s in [s for s, h in held.items() if trade.ts - h.ts > _SWAP_WINDOW_US]:
                yield from emit(s, held.pop(s))
        before = held.pop(symbol, None)
        if before is not None:
            yield from emit(symbol, trade)
            yield from emit(symbol, before)
        elif out_of_order and rng.random() < out_of_order:
            held[symbol] = trade
        else:
            yield from emit(symbol, trade)
    for s, h in sorted(held.items(), key=lambda kv: kv[1].ts):
        yield from emit(s, h)
    for _, _, s, t in sorted(resend):
        yield s, t


class SyntheticSource(Source):
    """``generate_trades`` paced at ``rate`` trades per wall-clock second (None = as fast as possible)."""

    def __init__(
        self,
        *,
        symbols: int | list[str] = 10,
        rate: float | None = 1000.0,
        seed: int = 42,
        limit: int | None = None,
        exchange: str = "synthetic",
        start_us: int | None = None,
        max_trades: int = 500,
        max_ms: int = 50,
        out_of_order: float = 0.0,
        duplicates: float = 0.0,
        late: float = 0.0,
        late_ms: int = 120_000,
    ) -> None:
        if rate is not None and (not math.isfinite(rate) or rate <= 0):
            raise ValueError(f"rate must be positive and finite or None, got {rate!r}")
        self.symbols = symbol_names(symbols)
        self.rate = rate
        self.exchange = exchange
        self.max_trades = max_trades
        self.max_ms = max_ms
        self._options = dict(
            seed=seed, limit=limit, start_us=start_us, out_of_order=out_of_order, duplicates=duplicates, late=late, late_ms=late_ms,
            event_rate=rate or MEAN_EVENT_RATE,
        )
        _check_options(limit, out_of_order, duplicates, late)
        self._stopped = False

    async def stream(self) -> AsyncIterator[SourceItem]:
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(self.exchange, self.max_trades, self.max_ms)
        start = loop.time()
        sent = 0
        log.info("synthetic source started", symbols=len(self.symbols), rate=self.rate, **self._options)
        for symbol, trade in generate_trades(self.symbols, **self._options):
            if self._stopped:
                break
            sent += 1
            for batch in batcher.add(symbol, trade):
                yield batch
                await asyncio.sleep(0)
            if self.rate is not None:
                delay = start + sent / self.rate - loop.time()
                if delay > _MIN_SLEEP_S:
                    await asyncio.sleep(delay)
        for batch in batcher.flush():
            yield batch
        log.info("synthetic source finished", trades=sent, stopped=self._stopped)

    async def aclose(self) -> None:
        """Make a running ``stream()`` stop generating, flush its open batches and end."""
        self._stopped = True
