"""The synthetic source: determinism, realism bounds, and disorder options doing what they say."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest

from schemas.models import Trade, TradeBatch
from schemas.validation import trade_problem
from streams.sources.synthetic import SyntheticSource, generate_trades, symbol_names

START = 1_750_000_000_000_000
N = 20_000


def per_symbol(items: list[tuple[str, Trade]]) -> dict[str, list[Trade]]:
    out: dict[str, list[Trade]] = defaultdict(list)
    for s, t in items:
        out[s].append(t)
    return out


def inversions(items: list[tuple[str, Trade]]) -> list[int]:
    """Per symbol, how far each trade's time is behind its predecessor's (only where it is)."""
    gaps = []
    for trades in per_symbol(items).values():
        gaps += [a.ts - b.ts for a, b in zip(trades, trades[1:], strict=False) if b.ts < a.ts]
    return gaps


async def collect(source: SyntheticSource) -> list[TradeBatch]:
    return [b async for b in source.stream()]


def test_same_seed_same_trades_other_seed_others() -> None:
    opts = dict(symbols=5, limit=3000, start_us=START, out_of_order=0.05, duplicates=0.02, late=0.01)
    a = list(generate_trades(seed=7, **opts))
    assert a == list(generate_trades(seed=7, **opts))
    b = list(generate_trades(seed=8, **opts))
    assert [t.price for _, t in a] != [t.price for _, t in b]


def test_clean_stream_is_ordered_unique_and_valid() -> None:
    items = list(generate_trades(limit=N, start_us=START))
    assert len(items) == N
    assert [t.ts for _, t in items] == sorted(t.ts for _, t in items)
    now = START + 10**12
    assert all(trade_problem(t, now) is None for _, t in items)
    assert {t.side for _, t in items} == {"buy", "sell"}
    for trades in per_symbol(items).values():
        ids = [int(t.trade_id) for t in trades]
        assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_symbols_count_names_and_zipf_share() -> None:
    items = list(generate_trades(7, limit=N, start_us=START))
    counts = Counter(s for s, _ in items)
    assert set(counts) == {f"SYN{i}/USDT" for i in range(7)} == set(symbol_names(7))
    assert counts["SYN0/USDT"] > 2 * counts["SYN6/USDT"]
    named = list(generate_trades(["BTC/USDT", "ETH/USDT"], limit=500, start_us=START))
    assert {s for s, _ in named} == {"BTC/USDT", "ETH/USDT"}
    with pytest.raises(ValueError):
        symbol_names(0)


def test_prices_positive_realistic_and_repeating() -> None:
    items = list(generate_trades(limit=N, start_us=START, seed=3))
    for trades in per_symbol(items).values():
        prices = [t.price for t in trades]
        assert min(prices) > 0
        assert 0.005 < prices[0] < 100_000
        assert max(prices) / min(prices) < 1.5  # a few minutes of event time, not a crash
        assert len(set(prices)) < len(prices)  # tick grid: trades share prices
        assert all(t.amount > 0 for t in trades)


def test_event_time_is_independent_of_rate_and_near_the_mean_rate() -> None:
    items = list(generate_trades(limit=N, start_us=START))
    span_s = (items[-1][1].ts - items[0][1].ts) / 1e6
    assert 5 < span_s < 200  # mean 1000 trades/s of event time, bursty


def test_out_of_order_swaps_neighbours_within_a_second() -> None:
    clean = list(generate_trades(limit=N, start_us=START))
    assert inversions(clean) == []
    items = list(generate_trades(limit=N, start_us=START, out_of_order=0.05))
    assert sorted(items, key=lambda st: (st[1].ts, st[0])) == sorted(clean, key=lambda st: (st[1].ts, st[0]))
    gaps = inversions(items)
    assert 0.5 * 0.05 * N < len(gaps) < 1.5 * 0.05 * N
    assert max(gaps) <= 1_000_000


def test_duplicates_are_resent_unchanged_a_bit_later() -> None:
    items = list(generate_trades(limit=N, start_us=START, duplicates=0.02))
    seen: dict[tuple[str, str], int] = {}
    dups = 0
    for pos, (s, t) in enumerate(items):
        key = (s, t.trade_id)
        if key in seen:
            dups += 1
            assert items[seen[key]] == (s, t)
            assert 0 < pos - seen[key] <= 60
        else:
            seen[key] = pos
    assert len(items) == N + dups
    assert 0.5 * 0.02 * N < dups < 1.5 * 0.02 * N
    assert len(seen) == N


def test_late_trades_are_retimed_into_the_past_with_unique_ids() -> None:
    clean = list(generate_trades(limit=N, start_us=START))
    items = list(generate_trades(limit=N, start_us=START, late=0.01, late_ms=120_000))
    assert len(items) == N
    late = [(s, t) for (s, t), (_, c) in zip(items, clean, strict=True) if t.ts != c.ts]
    assert 0.5 * 0.01 * N < len(late) < 1.5 * 0.01 * N
    pairs = [(t, c) for (_, t), (_, c) in zip(items, clean, strict=True) if t.ts != c.ts]
    assert all(c.ts - t.ts == 120_000_000 and t._replace(ts=c.ts) == c for t, c in pairs)
    assert len({(s, t.trade_id) for s, t in items}) == N
    assert len(inversions(items)) >= len(late)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError):
        SyntheticSource(out_of_order=1.5)
    with pytest.raises(ValueError):
        SyntheticSource(rate=0)
    with pytest.raises(ValueError):
        generate_trades(limit=-1)


async def test_source_batches_the_generator_one_symbol_per_batch() -> None:
    source = SyntheticSource(symbols=4, rate=None, limit=5000, start_us=START, max_trades=100, max_ms=50, exchange="syn")
    batches = await collect(source)
    assert all(b.exchange == "syn" and 0 < len(b.trades) <= 100 for b in batches)
    assert all(b.trades[-1].ts - b.trades[0].ts < 50_000 for b in batches)
    flat = per_symbol([(b.symbol, t) for b in batches for t in b.trades])
    assert flat == per_symbol(list(generate_trades(4, limit=5000, start_us=START)))


async def test_rate_paces_wall_clock_and_event_time_alike() -> None:
    """Event time advances at ``rate`` too, so a fast synthetic feed never runs into the future."""
    start = time.perf_counter()
    paced = await collect(SyntheticSource(rate=1500, limit=300, start_us=START))
    elapsed = time.perf_counter() - start
    assert 0.1 < elapsed < 1.5  # 300 trades at 1500/s: 0.2 s
    trades = sorted(t.ts for b in paced for t in b.trades)
    span_s = (trades[-1] - trades[0]) / 1e6
    assert 0.05 < span_s < 1.0  # ~0.2 s of event time, regime spikes allowed
    fast = await collect(SyntheticSource(rate=None, limit=300, start_us=START))

    def market(batches):
        return sorted((b.symbol, t.trade_id, t.amount, t.side) for b in batches for t in b.trades)

    assert market(paced) == market(fast)  # same trades; only the clock (and so the random-walk steps) differ
