"""Streaming technical indicators, equal to TA-Lib's over the same bar series.

Pure and I/O-free: the Faust agent around it only feeds candles and publishes what comes back.

Each series (exchange, symbol, interval) keeps an ``IndicatorState``: O(1) work per candle (CCI
excepted: its mean deviation is a sum over the window, as in TA-Lib) and O(longest period + K)
memory. The arithmetic replays TA-Lib 0.8's C code operation by operation — same seeds, same
running sums updated in the same order, same zero tests — so a value is bit-identical to
``talib`` except where TA-Lib fuses a multiply-add (its ATR step on an FMA-capable CPU), which
stays within a few ulp. A value is None exactly where TA-Lib returns NaN (its lookback).

TA-Lib behaviours kept on purpose (users compare against TA-Lib, not against a textbook):

- EMA is seeded with the SMA of its first n closes; the MACD fast and slow EMAs are seeded on
  windows ending on the same bar (bar slow-1) and the signal with the SMA of the first
  ``signal`` MACD values, so MACD, signal and histogram all start at bar slow+signal-2.
- RSI, ATR and ADX use unstable period 0: RSI is seeded with the averages of the first n changes
  (n+1 closes), ATR with the SMA of the first n true ranges (bar 0 has none), ADX with the mean
  of the first n DX. RSI is 0 when nothing moved (gain and loss both 0).
- STOCH (%K = (C-LL)/((HH-LL)/100), slow %K and %D as SMA) and WILLR are 0 on a window
  where high equals low; ROC is 0 after a zero close.
- Bollinger deviation is the population deviation of TA-Lib 0.8's shifted, reseeded variance.
- CCI is 0 when the close sits on the mean or the mean deviation is zero (|x| < 1e-14).
- ADX skips a DX whose +DI + -DI is zero, +DI/-DI are 0 when the true range sum is 0.
- MFI ignores a typical-price change within 1e-14 of the prices' magnitude, restarts its sums
  after a whole window without money flow, and is 0 on a window without any.
- OBV starts at the first candle's volume.

A series is a sequence of bars: a missing interval is not filled in, exactly as TA-Lib sees an
array. Revisions and late candles inside the last ``history`` candles are applied by rolling the
state back to just before that candle and replaying; older ones raise ``RevisionTooOld``.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial, reduce
from operator import add
from typing import Any

from schemas.models import Candle, Indicators

# TA-Lib adds left to right from 0; Python 3.12+ ``sum`` of floats compensates, so use a plain fold there.
_naive_sum = sum if sys.version_info < (3, 12) else partial(reduce, add)

_EPSILON = 1e-14  # TA_EPSILON of TA-Lib 0.8 (ta_utility.h)
_SNAPSHOT_VERSION = 1

VALUE_FIELDS = (
    "rsi", "ma50", "ma200", "ema12", "ema26", "ema50", "ema200", "macd", "macd_signal", "macd_histogram",
    "bb_upper", "bb_middle", "bb_lower", "atr", "stoch_k", "stoch_d", "obv", "wma", "adx", "plus_di",
    "minus_di", "cci", "willr", "mfi", "roc",
)  # fmt: skip


class IndicatorError(ValueError):
    """A candle the engine cannot apply; ``reason`` is what the shell dead-letters it with."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadCandle(IndicatorError):
    """The candle itself is unusable (non-finite numbers, high below low, not final, wrong key)."""


class RevisionTooOld(IndicatorError):
    """A revised or late candle older than the kept history: the state before it is gone."""


@dataclass(frozen=True, slots=True)
class IndicatorConfig:
    """Periods of every indicator. The output field names stay those of the defaults.

    ``sma_periods`` feed ma50 and ma200, ``ema_periods`` feed ema12, ema26, ema50 and ema200 in
    that order. ``history`` is how many recent candles can be revised or inserted late.
    """

    sma_periods: tuple[int, int] = (50, 200)
    ema_periods: tuple[int, int, int, int] = (12, 26, 50, 200)
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bb_period: int = 20
    bb_dev_up: float = 2.0
    bb_dev_down: float = 2.0
    atr_period: int = 14
    stoch_fastk: int = 14
    stoch_slowk: int = 3
    stoch_slowd: int = 3
    wma_period: int = 20
    adx_period: int = 14
    cci_period: int = 20
    willr_period: int = 14
    mfi_period: int = 14
    roc_period: int = 10
    history: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "sma_periods", tuple(self.sma_periods))
        object.__setattr__(self, "ema_periods", tuple(self.ema_periods))
        if len(self.sma_periods) != 2 or len(self.ema_periods) != 4:
            raise ValueError("sma_periods needs 2 periods (ma50, ma200), ema_periods 4 (ema12..ema200)")
        at_least_2 = {
            **{f"sma_periods[{i}]": p for i, p in enumerate(self.sma_periods)},
            **{f"ema_periods[{i}]": p for i, p in enumerate(self.ema_periods)},
            "rsi_period": self.rsi_period, "macd_fast": self.macd_fast, "macd_slow": self.macd_slow,
            "bb_period": self.bb_period, "atr_period": self.atr_period, "wma_period": self.wma_period,
            "adx_period": self.adx_period, "cci_period": self.cci_period, "willr_period": self.willr_period,
            "mfi_period": self.mfi_period,
        }  # fmt: skip
        at_least_1 = {
            "macd_signal": self.macd_signal, "stoch_fastk": self.stoch_fastk, "stoch_slowk": self.stoch_slowk,
            "stoch_slowd": self.stoch_slowd, "roc_period": self.roc_period, "history": self.history,
        }  # fmt: skip
        for name, value in (*at_least_2.items(), *at_least_1.items()):
            low = 2 if name in at_least_2 else 1
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 100_000:
                raise ValueError(f"{name} must be an integer in [{low}, 100000], got {value!r}")
        if self.macd_fast >= self.macd_slow:
            raise ValueError("macd_fast must be shorter than macd_slow")
        for name in ("bb_dev_up", "bb_dev_down"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")

    @property
    def window(self) -> int:
        """Bars of history the state needs behind the current one (the longest period, plus one)."""
        return 1 + max(
            *self.sma_periods, *self.ema_periods, self.rsi_period, self.macd_slow, self.bb_period,
            self.atr_period, self.stoch_fastk, self.stoch_slowk, self.stoch_slowd, self.wma_period,
            self.cci_period, self.willr_period, self.mfi_period, self.roc_period,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndicatorConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# Running scalars of a series, in the order of IndicatorState.scalars. Every one starts at 0.0
# except the window extremes' indices (-1: "nothing cached") and the Bollinger reseed countdown.
_SCALARS = (
    "prev_c", "prev_h", "prev_l", "sma0", "sma1", "ema0", "ema1", "ema2", "ema3", "gain", "loss",
    "m_fast", "m_slow", "m_sig", "bb_total", "bb_shift", "bb_v1", "bb_v2", "bb_reseed", "atr",
    "s_hi", "s_hi_i", "s_lo", "s_lo_i", "k_total", "d_total", "w_hi", "w_hi_i", "w_lo", "w_lo_i",
    "obv", "wma_sub", "wma_sum", "wma_trail", "pdm", "mdm", "tr_sum", "adx", "prev_tp", "mf_pos",
    "mf_neg", "mf_null",
)  # fmt: skip
_BUFFERS = ("closes", "highs", "lows", "fastk", "slowk", "tps", "pos_flow", "neg_flow")


@dataclass(slots=True)
class _Entry:
    """One of the last ``history`` candles: the scalars just before it, and its output."""

    candle: Candle
    before: list[float]
    output: Indicators


def candle_problem(candle: Candle) -> str | None:
    """Why a candle cannot be fed to the indicators, or None when it is fine."""
    for name in ("open", "high", "low", "close", "volume"):
        value = getattr(candle, name)
        if not isinstance(value, float | int) or isinstance(value, bool) or not math.isfinite(value):
            return f"bad {name} {value!r}"
    if candle.high < candle.low:
        return f"high {candle.high!r} below low {candle.low!r}"
    if candle.volume < 0:
        return f"negative volume {candle.volume!r}"
    if not isinstance(candle.open_time, int) or isinstance(candle.open_time, bool):
        return f"bad open_time {candle.open_time!r}"
    if not isinstance(candle.revision, int) or isinstance(candle.revision, bool):
        return f"bad revision {candle.revision!r}"
    return None


class IndicatorState:
    """Running indicator state of one series, fed one bar at a time.

    ``scalars`` is rebuilt as a new list on every bar, so keeping the old list is a free snapshot
    of the state before that bar; the per-bar buffers only grow at the end and are trimmed at the
    front, so rolling back is truncating them to the bar count of the snapshot.
    """

    __slots__ = ("cfg", "key", "t", "base", "scalars", "entries", *_BUFFERS, "_keep")

    def __init__(self, cfg: IndicatorConfig, key: str) -> None:
        self.cfg = cfg
        self.key = key
        self._keep = cfg.window + cfg.history + 1
        self.reset()

    def reset(self) -> None:
        """Forget every bar: the state of an empty series."""
        cfg = self.cfg
        self.t = 0  # bars fed so far; the next bar gets index t
        self.base = 0  # series index of element 0 of every buffer
        scalars = [0.0] * len(_SCALARS)
        for name in ("s_hi_i", "s_lo_i", "w_hi_i", "w_lo_i"):
            scalars[_SCALARS.index(name)] = -1
        scalars[_SCALARS.index("bb_reseed")] = 32 * cfg.bb_period
        self.scalars: list[Any] = scalars
        for name in _BUFFERS:
            setattr(self, name, array("d"))
        self.entries: deque[_Entry] = deque()

    # -- the per-bar step ----------------------------------------------------------------------------------

    def step(self, h: float, l: float, c: float, v: float) -> tuple[float | None, ...]:  # noqa: E741, C901, PLR0912, PLR0915
        """Advance by one bar and return its values in ``VALUE_FIELDS`` order."""
        cfg = self.cfg
        t = self.t
        base = self.base
        closes, highs, lows = self.closes, self.highs, self.lows
        closes.append(c)
        highs.append(h)
        lows.append(l)
        (
            prev_c, prev_h, prev_l, sma0, sma1, ema0, ema1, ema2, ema3, gain, loss,
            m_fast, m_slow, m_sig, bb_total, bb_shift, bb_v1, bb_v2, bb_reseed, atr,
            s_hi, s_hi_i, s_lo, s_lo_i, k_total, d_total, w_hi, w_hi_i, w_lo, w_lo_i,
            obv, wma_sub, wma_sum, wma_trail, pdm, mdm, tr_sum, adx, prev_tp, mf_pos,
            mf_neg, mf_null,
        ) = self.scalars  # fmt: skip

        # SMA: TA-Lib's running total, new close added before the output, oldest removed after.
        n0, n1 = cfg.sma_periods
        sma0 += c
        if t >= n0 - 1:
            ma50 = sma0 / n0
            sma0 -= closes[t - n0 + 1 - base]
        else:
            ma50 = None
        sma1 += c
        if t >= n1 - 1:
            ma200 = sma1 / n1
            sma1 -= closes[t - n1 + 1 - base]
        else:
            ma200 = None

        # EMA: the scalar holds the seed sum until bar n-1, then the average.
        e0, e1, e2, e3 = cfg.ema_periods
        if t < e0 - 1:
            ema0 += c
            ema12 = None
        else:
            ema0 = (ema0 + c) / e0 if t == e0 - 1 else (c - ema0) * (2.0 / (e0 + 1)) + ema0
            ema12 = ema0
        if t < e1 - 1:
            ema1 += c
            ema26 = None
        else:
            ema1 = (ema1 + c) / e1 if t == e1 - 1 else (c - ema1) * (2.0 / (e1 + 1)) + ema1
            ema26 = ema1
        if t < e2 - 1:
            ema2 += c
            ema50 = None
        else:
            ema2 = (ema2 + c) / e2 if t == e2 - 1 else (c - ema2) * (2.0 / (e2 + 1)) + ema2
            ema50 = ema2
        if t < e3 - 1:
            ema3 += c
            ema200 = None
        else:
            ema3 = (ema3 + c) / e3 if t == e3 - 1 else (c - ema3) * (2.0 / (e3 + 1)) + ema3
            ema200 = ema3

        # RSI: sums of the first n gains/losses, then Wilder's (x*(n-1) + new) * (1/n).
        n = cfg.rsi_period
        rsi = None
        if t:
            change = c - prev_c
            if t > n:
                loss *= n - 1
                gain *= n - 1
            if change > 0.0:
                gain += change
            else:
                loss -= change
            if t >= n:
                loss *= 1.0 / n
                gain *= 1.0 / n
                total = gain + loss
                rsi = 100.0 * (gain / total) if total > 0.0 else 0.0

        # MACD: fast and slow seeds end on bar slow-1; the signal is seeded from the MACD values.
        fast, slow, sig = cfg.macd_fast, cfg.macd_slow, cfg.macd_signal
        macd = macd_signal = macd_histogram = None
        if t < slow - 1:
            m_slow += c
            if t >= slow - fast:
                m_fast += c
        else:
            if t == slow - 1:
                m_fast = (m_fast + c) / fast
                m_slow = (m_slow + c) / slow
            else:
                m_fast = (c - m_fast) * (2.0 / (fast + 1)) + m_fast
                m_slow = (c - m_slow) * (2.0 / (slow + 1)) + m_slow
            line = m_fast - m_slow
            start = slow + sig - 2
            if t < start:
                m_sig += line
            else:
                m_sig = (m_sig + line) / sig if t == start else (line - m_sig) * (2.0 / (sig + 1)) + m_sig
                macd, macd_signal, macd_histogram = line, m_sig, line - m_sig

        # Bollinger: SMA middle; variance of the closes minus a shift, reseeded when it cancels.
        n = cfg.bb_period
        inv = 1.0 / n
        bb_upper = bb_middle = bb_lower = None
        if t == 0:
            bb_shift = c
        bb_total += c
        dev = c - bb_shift
        bb_v1 += dev
        bb_v2 += dev * dev
        if t >= n - 1:
            mean1 = bb_v1 * inv
            variance = bb_v2 * inv - mean1 * mean1
            bb_middle = bb_total / n
            oldest = closes[t - n + 1 - base]
            bb_total -= oldest
            dev = oldest - bb_shift
            bb_v1 -= dev
            dev *= dev
            bb_v2 -= dev
            bb_reseed -= 1
            if variance < 0.000001 * (bb_v2 * inv) or dev > 1000000.0 * bb_v2 or bb_reseed <= 0:
                bb_shift, bb_v1, bb_v2, variance = _reseed_variance(closes[t - n + 1 - base : t + 1 - base], inv)
                bb_reseed = 32 * n
            std = math.sqrt(variance) if variance > 0.0 else 0.0
            if cfg.bb_dev_up == cfg.bb_dev_down:
                width = std * cfg.bb_dev_up
                bb_upper, bb_lower = bb_middle + width, bb_middle - width
            else:
                bb_upper, bb_lower = bb_middle + std * cfg.bb_dev_up, bb_middle - std * cfg.bb_dev_down

        # True range (bar 0 has none: no previous close).
        if t:
            true_range = h - l
            gap = abs(prev_c - h)
            if gap > true_range:
                true_range = gap
            gap = abs(prev_c - l)
            if gap > true_range:
                true_range = gap
        else:
            true_range = 0.0

        # ATR: SMA of the first n true ranges, then Wilder's alpha*tr + beta*atr.
        n = cfg.atr_period
        atr_out = None
        if t:
            if t < n:
                atr += true_range
            elif t == n:
                atr = (atr + true_range) / n
                atr_out = atr
            else:
                beta = (n - 1) / n
                atr = (1.0 - beta) * true_range + beta * atr
                atr_out = atr

        # Stochastic: fast %K over the window's extremes, slow %K and %D as TA-Lib SMAs.
        fastk_n, slowk_n, slowd_n = cfg.stoch_fastk, cfg.stoch_slowk, cfg.stoch_slowd
        stoch_k = stoch_d = None
        fastk = slowk = 0.0
        if t >= fastk_n - 1:
            first = t - fastk_n + 1
            if s_lo_i < first:
                s_lo, s_lo_i = _lowest(lows, first - base, t - base, base)
            elif l <= s_lo:
                s_lo, s_lo_i = l, t
            if s_hi_i < first:
                s_hi, s_hi_i = _highest(highs, first - base, t - base, base)
            elif h >= s_hi:
                s_hi, s_hi_i = h, t
            diff = (s_hi - s_lo) / 100.0
            fastk = (c - s_lo) / diff if diff != 0.0 else 0.0
        self.fastk.append(fastk)
        if t >= fastk_n - 1:
            k_total += fastk
            if t >= fastk_n + slowk_n - 2:
                slowk = k_total / slowk_n
                k_total -= self.fastk[t - slowk_n + 1 - base]
        self.slowk.append(slowk)
        if t >= fastk_n + slowk_n - 2:
            d_total += slowk
            if t >= fastk_n + slowk_n + slowd_n - 3:
                stoch_k, stoch_d = slowk, d_total / slowd_n
                d_total -= self.slowk[t - slowd_n + 1 - base]

        # Williams %R: same window logic, its own period.
        n = cfg.willr_period
        willr = None
        if t >= n - 1:
            first = t - n + 1
            if w_lo_i < first:
                w_lo, w_lo_i = _lowest(lows, first - base, t - base, base)
            elif l <= w_lo:
                w_lo, w_lo_i = l, t
            if w_hi_i < first:
                w_hi, w_hi_i = _highest(highs, first - base, t - base, base)
            elif h >= w_hi:
                w_hi, w_hi_i = h, t
            diff = (w_hi - w_lo) / -100.0
            willr = (w_hi - c) / diff if diff != 0.0 else 0.0

        # OBV from the first volume.
        if t == 0:
            obv = v
        elif c > prev_c:
            obv += v
        elif c < prev_c:
            obv -= v

        # WMA: TA-Lib's periodSum/periodSub recurrence.
        n = cfg.wma_period
        if t < n - 1:
            wma_sub += c
            wma_sum += c * (t + 1)
            wma = None
        else:
            wma_sub += c
            wma_sub -= wma_trail
            wma_sum += c * n
            wma_trail = closes[t - n + 1 - base]
            wma = wma_sum / (n * (n + 1) // 2)
            wma_sum -= wma_sub

        # ADX, +DI, -DI: DM and TR summed over bars 1..n-1, then Wilder steps.
        n = cfg.adx_period
        adx_out = plus_di = minus_di = None
        if t:
            up = h - prev_h
            down = prev_l - l
            plus_dm = up if up - down > 0.0 and up > 0.0 else 0.0
            minus_dm = down if down - up > 0.0 and down > 0.0 else 0.0
            if t < n:
                mdm += minus_dm
                pdm += plus_dm
                tr_sum += true_range
            else:
                inv = 1.0 / n
                mdm -= mdm * inv
                pdm -= pdm * inv
                mdm += minus_dm
                pdm += plus_dm
                tr_sum = tr_sum - tr_sum * inv + true_range
                dx = None
                if tr_sum > 0.0:
                    minus_di = 100.0 * (mdm / tr_sum)
                    plus_di = 100.0 * (pdm / tr_sum)
                    di_sum = minus_di + plus_di
                    if not -_EPSILON < di_sum < _EPSILON:
                        dx = 100.0 * (abs(minus_di - plus_di) / di_sum)
                else:
                    minus_di = plus_di = 0.0
                if t < 2 * n - 1:
                    if dx is not None:
                        adx += dx
                elif t == 2 * n - 1:
                    if dx is not None:
                        adx += dx
                    adx = adx / n
                    adx_out = adx
                else:
                    if dx is not None:
                        adx = adx - (adx - dx) * inv
                    adx_out = adx

        # CCI: TA-Lib sums its circular buffer slot by slot, so sum the window in slot order.
        tp = (h + l + c) / 3.0
        self.tps.append(tp)
        n = cfg.cci_period
        cci = None
        if t >= n - 1:
            window = self.tps[t - n + 1 - base : t + 1 - base]
            split = (n - (t + 1) % n) % n
            slots = window[split:] + window[:split]
            mean = _naive_sum(slots) / n
            mean_dev = _naive_sum(map(abs, map(mean.__rsub__, slots)))
            away = tp - mean
            if -_EPSILON < away < _EPSILON or -_EPSILON < mean_dev < _EPSILON:
                cci = 0.0
            else:
                cci = away / (0.015 * (mean_dev / n))

        # MFI: positive/negative money flow sums over the window, dead-zone on flat prices.
        n = cfg.mfi_period
        mfi = None
        pos = neg = 0.0
        if t:
            if t > n:
                mf_pos -= self.pos_flow[t - n - base]
                mf_neg -= self.neg_flow[t - n - base]
            change = tp - prev_tp
            flow = 0.0 if abs(change) <= _EPSILON * (abs(tp) + abs(prev_tp)) else tp * v
            if change < 0.0:
                neg = flow
            else:
                pos = flow
            mf_pos += pos
            mf_neg += neg
            mf_null = mf_null + 1 if flow == 0.0 else 0
            if mf_null >= n:
                mf_null = n
                mf_pos = mf_neg = 0.0
            if t >= n:
                total = mf_pos + mf_neg
                if total <= 0.0:
                    mfi = 0.0
                else:
                    mfi = 100.0 * ((0.0 if mf_pos < 0.0 else total if mf_pos > total else mf_pos) / total)
        self.pos_flow.append(pos)
        self.neg_flow.append(neg)

        # ROC in percent.
        n = cfg.roc_period
        if t >= n:
            old = closes[t - n - base]
            roc = (c / old - 1.0) * 100.0 if old != 0.0 else 0.0
        else:
            roc = None

        self.scalars = [
            c, h, l, sma0, sma1, ema0, ema1, ema2, ema3, gain, loss,
            m_fast, m_slow, m_sig, bb_total, bb_shift, bb_v1, bb_v2, bb_reseed, atr,
            s_hi, s_hi_i, s_lo, s_lo_i, k_total, d_total, w_hi, w_hi_i, w_lo, w_lo_i,
            obv, wma_sub, wma_sum, wma_trail, pdm, mdm, tr_sum, adx, tp, mf_pos,
            mf_neg, mf_null,
        ]  # fmt: skip
        self.t = t + 1
        if len(closes) > self._keep + 256:
            self._trim()
        return (
            rsi, ma50, ma200, ema12, ema26, ema50, ema200, macd, macd_signal, macd_histogram,
            bb_upper, bb_middle, bb_lower, atr_out, stoch_k, stoch_d, obv, wma, adx_out, plus_di,
            minus_di, cci, willr, mfi, roc,
        )  # fmt: skip

    def _trim(self) -> None:
        drop = len(self.closes) - self._keep
        for name in _BUFFERS:
            del getattr(self, name)[:drop]
        self.base += drop

    # -- history, rollback, replay -------------------------------------------------------------------------

    def feed(self, candle: Candle) -> Indicators:
        """Append a final candle newer than every kept one and remember how to undo it."""
        before = self.scalars
        output = Indicators(
            candle.exchange, candle.symbol, candle.interval, candle.open_time, candle.close, candle.revision,
            *self.step(candle.high, candle.low, candle.close, candle.volume),
        )
        self.entries.append(_Entry(candle, before, output))
        if len(self.entries) > self.cfg.history:
            self.entries.popleft()
        return output

    def rollback(self, depth: int) -> list[Candle]:
        """Undo the last ``depth`` kept candles and return them, oldest first."""
        undone = [self.entries.pop() for _ in range(depth)][::-1]
        self._restore(undone[0].before, self.t - depth)
        return [e.candle for e in undone]

    def _restore(self, scalars: list[Any], bars: int) -> None:
        """Go back to the state after ``bars`` bars whose scalars were ``scalars``."""
        self.scalars = scalars
        self.t = bars
        keep = bars - self.base
        for name in _BUFFERS:
            del getattr(self, name)[keep:]

    def covers_start(self) -> bool:
        """True when the kept candles go back to the first bar of the series."""
        return len(self.entries) == self.t

    def apply(self, candle: Candle) -> list[Indicators]:
        """Feed, revise or insert ``candle``; return its record and every record it changed."""
        entries = self.entries
        if not entries or candle.open_time > entries[-1].candle.open_time:
            return [self.feed(candle)]
        if candle.open_time < entries[0].candle.open_time and not self.covers_start():
            raise RevisionTooOld(
                f"candle {self.key} {candle.open_time} rev {candle.revision} is older than the kept history "
                f"(oldest kept {entries[0].candle.open_time}, history {self.cfg.history})"
            )
        depth = 0
        for entry in reversed(entries):
            if entry.candle.open_time <= candle.open_time:
                break
            depth += 1
        position = len(entries) - depth - 1
        if position >= 0 and entries[position].candle.open_time == candle.open_time:
            kept = entries[position]
            if candle.revision <= kept.candle.revision:
                return [kept.output]  # re-delivery or a stale revision: nothing changes
            later = self.rollback(depth + 1)[1:]
        else:
            later = self.rollback(depth)
        return [self.feed(c) for c in (candle, *later)]

    def peek(self, candle: Candle) -> Indicators:
        """Values as if ``candle`` (final or not) were the next bar, leaving the state as it was."""
        if self.entries and candle.open_time <= self.entries[-1].candle.open_time:
            raise BadCandle(
                f"peek at {self.key} {candle.open_time} needs a candle newer than the last final one "
                f"({self.entries[-1].candle.open_time})"
            )
        before, bars = self.scalars, self.t
        output = Indicators(
            candle.exchange, candle.symbol, candle.interval, candle.open_time, candle.close, candle.revision,
            *self.step(candle.high, candle.low, candle.close, candle.volume),
        )
        self._restore(before, bars)
        return output

    # -- serialisation -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        oldest = self.t - len(self.entries)
        keep_from = max(self.base, oldest - self.cfg.window)
        return {
            "t": self.t,
            "base": keep_from,
            "scalars": list(self.scalars),
            "buffers": {name: getattr(self, name)[keep_from - self.base :].tolist() for name in _BUFFERS},
            "entries": [
                {"candle": e.candle.to_avro(), "before": list(e.before), "output": e.output.to_avro()}
                for e in self.entries
            ],
        }

    @classmethod
    def from_dict(cls, cfg: IndicatorConfig, key: str, d: dict[str, Any]) -> IndicatorState:
        state = cls(cfg, key)
        state.t = d["t"]
        state.base = d["base"]
        state.scalars = list(d["scalars"])
        for name in _BUFFERS:
            setattr(state, name, array("d", d["buffers"][name]))
        state.entries = deque(
            _Entry(Candle.from_avro(e["candle"]), list(e["before"]), Indicators.from_avro(e["output"]))
            for e in d["entries"]
        )
        return state


def _reseed_variance(window: Sequence[float], inv: float) -> tuple[float, float, float, float]:
    """TA-Lib's reseed: shift = window mean, sums recomputed, oldest bar removed again.

    Returns the new shift, the two shifted sums (without the oldest bar) and the window's variance.
    """
    total = 0.0
    for x in window:
        total += x
    shift = total * inv
    v1 = v2 = 0.0
    for x in window:
        dev = x - shift
        v1 += dev
        v2 += dev * dev
    mean1 = v1 * inv
    variance = v2 * inv - mean1 * mean1
    if variance < 0.000000000001 * (v2 * inv):
        variance = 0.0
    dev = window[0] - shift
    v1 -= dev
    v2 -= dev * dev
    return shift, v1, v2, variance


def _lowest(values: array, first: int, last: int, base: int) -> tuple[float, int]:
    """Lowest of values[first..last] and its series index (earliest on ties, as TA-Lib)."""
    best, at = values[first], first
    for i in range(first + 1, last + 1):
        if values[i] < best:
            best, at = values[i], i
    return best, at + base


def _highest(values: array, first: int, last: int, base: int) -> tuple[float, int]:
    """Highest of values[first..last] and its series index (earliest on ties, as TA-Lib)."""
    best, at = values[first], first
    for i in range(first + 1, last + 1):
        if values[i] > best:
            best, at = values[i], i
    return best, at + base


@dataclass(slots=True)
class IndicatorEngine:
    """Indicator states of every series, keyed ``exchange:symbol:interval`` (``Candle.key``)."""

    config: IndicatorConfig = field(default_factory=IndicatorConfig)
    series: dict[str, IndicatorState] = field(default_factory=dict)

    def _state(self, key: str) -> IndicatorState:
        state = self.series.get(key)
        if state is None:
            state = self.series[key] = IndicatorState(self.config, key)
        return state

    @staticmethod
    def _check(candle: Candle) -> None:
        problem = candle_problem(candle)
        if problem is not None:
            raise BadCandle(f"candle {candle.key} {candle.open_time}: {problem}")

    def process(self, candle: Candle) -> list[Indicators]:
        """Apply a final candle; return its record first, then every later record a revision changed.

        A new candle gives one record. A revision (same open_time, higher revision) or a late candle
        (older open_time not yet seen) recomputes from there on and returns the records of it and of
        every later kept candle. A re-delivery (same open_time, same or lower revision) returns the
        kept record and changes nothing. Raises ``BadCandle`` or ``RevisionTooOld``.
        """
        if not candle.is_final:
            raise BadCandle(f"candle {candle.key} {candle.open_time} is not final (use peek for a forming candle)")
        self._check(candle)
        return self._state(candle.key).apply(candle)

    def update(self, candle: Candle) -> Indicators:
        """The record of a final candle (see ``process`` for the records a revision also changes)."""
        return self.process(candle)[0]

    def peek(self, candle: Candle) -> Indicators:
        """Values of a forming candle as if it closed now; the state is left unchanged."""
        self._check(candle)
        return self._state(candle.key).peek(candle)

    def seed(self, key: str, candles: Iterable[Candle]) -> Indicators | None:
        """Restart series ``key`` from history: its candles in any order, the highest revision per open_time.

        Returns the record of the newest candle (None for no candles).
        """
        latest: dict[int, Candle] = {}
        for candle in candles:
            if candle.key != key:
                raise BadCandle(f"seed of {key} got a candle of {candle.key}")
            if not candle.is_final:
                raise BadCandle(f"seed of {key} got a candle at {candle.open_time} that is not final")
            self._check(candle)
            kept = latest.get(candle.open_time)
            if kept is None or candle.revision > kept.revision:
                latest[candle.open_time] = candle
        state = self._state(key)
        state.reset()
        output = None
        for open_time in sorted(latest):
            output = state.feed(latest[open_time])
        return output

    def snapshot(self) -> dict[str, Any]:
        """The whole engine as a JSON-serialisable dict (floats round-trip exactly through orjson)."""
        return {
            "version": _SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "series": {key: state.to_dict() for key, state in self.series.items()},
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> IndicatorEngine:
        """An engine that continues exactly where the one that made ``data`` stopped."""
        if data.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"unsupported indicator snapshot version {data.get('version')!r}")
        config = IndicatorConfig.from_dict(data["config"])
        series = {key: IndicatorState.from_dict(config, key, d) for key, d in data["series"].items()}
        return cls(config, series)
