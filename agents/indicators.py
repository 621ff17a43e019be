"""Streaming technical indicators, equal to TA-Lib's over the same bar series.

Pure and I/O-free: the indicator agent around it only feeds candles and publishes what comes back.

Each series (exchange, symbol, interval) keeps an ``IndicatorState``: amortised O(1) work per
candle (window extremes are rescanned and running sums re-anchored only now and then; CCI's mean
deviation is a sum over its window, in TA-Lib too) and O(longest period + history) memory.

The arithmetic replays the C code of the TA-Lib that the ``talib`` wheel ships (0.8.1) operation
by operation: same seeds, same running sums updated in the same order, same re-anchoring of
running sums, same zero tests. Values are therefore bit-identical to ``talib``, except where
TA-Lib uses a fused multiply-add, which Python 3.11 lacks: the EMA step (so the EMAs and MACD),
the ATR step, and the upper band when the two band multipliers differ. Those can differ in the
last bit or two (rarely for the EMAs, on most bars for ATR), far inside the 1e-9 contract. A value
is None exactly where TA-Lib returns NaN (its lookback; TA-Lib's unstable periods stay at their
default 0).

TA-Lib behaviours kept on purpose (users check us against TA-Lib, not against a textbook):

- EMA is seeded with the SMA of its first n closes. The MACD fast and slow EMAs are seeded on
  windows that end on the same bar (slow-1), the signal with the SMA of the first ``signal`` MACD
  values, and all three outputs start at bar slow+signal-2.
- RSI is seeded with the mean gain and loss of the first n changes (n+1 closes) and is 0, not 50,
  when nothing moved in its window.
- ATR is seeded with the SMA of the first n true ranges; bar 0 has no true range.
- Bollinger deviation is the population deviation, from TA-Lib's shifted running sums that are
  re-anchored every 32 periods or when they cancel.
- STOCH %K = 100*((C-LL)/(HH-LL)) smoothed by SMAs into slow %K and %D; STOCH and WILLR are 0 on a
  window flat within 1e-14 of its prices; CCI is 0 when close-to-mean or the mean deviation is
  within 1e-14 of the mean.
- ADX and +DI/-DI use Wilder's sums (x - x/n + dm), DI are 0 while the true-range sum is 0, a DX
  is skipped while +DI + -DI is 0, and ADX starts at bar 2n-1 with the mean of the first n DX.
- MFI ignores a typical-price change within 1e-14 of the prices, restarts its sums after a whole
  window without money flow, and is 0 on a window without any. OBV starts at the first volume.
  ROC is 0 after a zero close. WMA re-anchors its running sums every 8 periods.

A series is a sequence of bars: a missing interval is not filled in, exactly as TA-Lib sees an
array. Revisions and late candles within the last ``history`` candles roll the state back to just
before that candle and replay; older ones raise ``RevisionTooOld``, except the re-delivery of a
candle that left the history at revision 0 (a backfill run again), which changes nothing.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial, reduce
from operator import add
from typing import Any

from schemas.models import Candle, Indicators

# TA-Lib adds left to right from 0; Python 3.12+ ``sum`` of floats compensates, so fold there.
_naive_sum = sum if sys.version_info < (3, 12) else partial(reduce, add)

_EPSILON = 1e-14  # TA_EPSILON of TA-Lib 0.8 (ta_utility.h)
_SNAPSHOT_VERSION = 1
# Runs of open times a series remembers past its kept history, each a stretch without a missing bar
# (gaps start a new one): re-deliveries older than the oldest are dead-lettered as too old.
_GONE_RUNS = 256

# The indicator fields of the record, in record order (the others say which candle it is).
VALUE_FIELDS = tuple(
    f.name for f in fields(Indicators)
    if f.name not in ("exchange", "symbol", "interval", "open_time", "close", "candle_revision")
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
    that order, ``adx_period`` also +DI and -DI. ``history`` is how many recent candles can be
    revised or arrive late; each kept candle costs about 2 kB.
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
            value = getattr(self, name)
            if not isinstance(value, float | int) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")

    @property
    def window(self) -> int:
        """Past bars the state reads back (EMA, RSI, MACD, ATR and ADX keep only running values)."""
        return 1 + max(
            *self.sma_periods, self.bb_period, self.stoch_fastk, self.stoch_slowk, self.stoch_slowd,
            self.wma_period, self.cci_period, self.willr_period, self.mfi_period, self.roc_period,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndicatorConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# Running scalars of a series, in the order of IndicatorState.scalars (see ``_initial_scalars``).
_SCALARS = (
    "prev_c", "prev_h", "prev_l", "sma0", "sma1", "ema0", "ema1", "ema2", "ema3", "gain", "loss",
    "m_fast", "m_slow", "m_sig", "bb_total", "bb_shift", "bb_v1", "bb_v2", "bb_reseed", "atr",
    "s_hi", "s_hi_i", "s_lo", "s_lo_i", "k_total", "d_total", "w_hi", "w_hi_i", "w_lo", "w_lo_i",
    "obv", "wma_sub", "wma_sum", "wma_trail", "wma_reseed", "pdm", "mdm", "tr_sum", "adx", "prev_tp",
    "mf_pos", "mf_neg", "mf_null",
)  # fmt: skip
# Per-bar values read back later (trailing values of running sums, window rescans). Lists, not
# arrays: reading a list element does not box a new float, which is most of a bar's reads.
_BUFFERS = ("closes", "highs", "lows", "fastk", "slowk", "tps", "pos_flow", "neg_flow")


def _initial_scalars(cfg: IndicatorConfig) -> list[Any]:
    """Scalars of an empty series: sums at 0, no window extreme cached, reseed countdowns full."""
    scalars: list[Any] = [0.0] * len(_SCALARS)
    for name in ("s_hi_i", "s_lo_i", "w_hi_i", "w_lo_i"):
        scalars[_SCALARS.index(name)] = -1
    scalars[_SCALARS.index("bb_reseed")] = 32 * cfg.bb_period
    scalars[_SCALARS.index("wma_reseed")] = 8 * cfg.wma_period
    scalars[_SCALARS.index("mf_null")] = 0
    return scalars


def _kept_bars(cfg: IndicatorConfig) -> int:
    """Buffer length kept after a trim: any kept candle can be replayed, with its window behind it."""
    return cfg.window + cfg.history + 1


def _constants(cfg: IndicatorConfig) -> tuple[Any, ...]:
    """Everything ``step`` derives from the config, computed once and the way TA-Lib computes it.

    ``lb_*`` are lookbacks: the series index of an indicator's first value.
    """
    e = cfg.ema_periods
    atr_beta = (cfg.atr_period - 1) / cfg.atr_period
    fastk, slowk, slowd = cfg.stoch_fastk, cfg.stoch_slowk, cfg.stoch_slowd
    return (
        *cfg.sma_periods, *(p - 1 for p in cfg.sma_periods),
        *e, *(p - 1 for p in e), *(2.0 / (p + 1) for p in e),
        cfg.rsi_period, cfg.rsi_period - 1, 1.0 / cfg.rsi_period,
        cfg.macd_fast, cfg.macd_slow, cfg.macd_signal, 2.0 / (cfg.macd_fast + 1), 2.0 / (cfg.macd_slow + 1),
        2.0 / (cfg.macd_signal + 1), cfg.macd_slow - cfg.macd_fast, cfg.macd_slow - 1,
        cfg.macd_slow + cfg.macd_signal - 2,
        cfg.bb_period, cfg.bb_period - 1, 1.0 / cfg.bb_period, cfg.bb_dev_up, cfg.bb_dev_down,
        cfg.atr_period, 1.0 - atr_beta, atr_beta,
        fastk, slowk, slowd, fastk - 1, fastk + slowk - 2, fastk + slowk + slowd - 3,
        cfg.willr_period, cfg.willr_period - 1,
        cfg.wma_period, cfg.wma_period - 1, cfg.wma_period * (cfg.wma_period + 1) / 2.0,
        cfg.adx_period, cfg.adx_period - 1, 2 * cfg.adx_period - 1,
        cfg.cci_period, cfg.cci_period - 1, cfg.mfi_period, cfg.roc_period,
        _kept_bars(cfg) + 64,
    )  # fmt: skip


def candle_problem(candle: Candle) -> str | None:
    """Why a candle cannot be fed to the indicators, or None when it is fine."""
    h, l, v = candle.high, candle.low, candle.volume  # noqa: E741
    try:
        if (
            math.isfinite(candle.open + h + l + candle.close + v)
            and l <= h
            and v >= 0.0
            and type(candle.open_time) is int
            and type(candle.revision) is int
        ):
            return None
    except TypeError:
        pass
    for name in ("open", "high", "low", "close", "volume"):
        value = getattr(candle, name)
        if not isinstance(value, float | int) or isinstance(value, bool) or not math.isfinite(value):
            return f"bad {name} {value!r}"
    if h < l:
        return f"high {h!r} below low {l!r}"
    if v < 0:
        return f"negative volume {v!r}"
    for name in ("open_time", "revision"):
        value = getattr(candle, name)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"bad {name} {value!r}"
    return None


class IndicatorState:
    """Running indicator state of one series, fed one bar at a time.

    ``scalars`` is rebuilt as a new list on every bar, so keeping the old list is a free snapshot
    of the state before that bar. The per-bar buffers only grow at the end and are trimmed at the
    front, so rolling back is truncating them to the bar count of the snapshot. ``entries`` keeps
    (candle, scalars before it, its record) for the last ``history`` candles.
    """

    __slots__ = ("cfg", "key", "t", "base", "scalars", "entries", "gone", *_BUFFERS, "_const")

    def __init__(self, cfg: IndicatorConfig, key: str) -> None:
        self.cfg = cfg
        self.key = key
        self._const = _constants(cfg)
        self.reset()

    def reset(self) -> None:
        """Forget every bar: the state of an empty series."""
        self.t = 0  # bars fed so far; the next bar has series index t
        self.base = 0  # series index of element 0 of every buffer
        self.scalars: list[Any] = _initial_scalars(self.cfg)
        for name in _BUFFERS:
            setattr(self, name, [])
        self.entries: deque[tuple[Candle, list[Any], Indicators]] = deque(maxlen=self.cfg.history)
        # Open times of the candles that left ``entries``, as runs [first, step, count]: a series
        # of consecutive bars is one run, so a re-delivered old candle is told from a late one.
        self.gone: list[int] = []

    # -- the per-bar step ---------------------------------------------------------------------------

    def step(self, candle: Candle) -> Indicators:  # noqa: C901, PLR0912, PLR0915
        """Advance by one bar and return its record; the caller keeps what it needs to undo it."""
        h, l, c, v = candle.high, candle.low, candle.close, candle.volume  # noqa: E741
        t = self.t
        i = t - self.base  # buffer index of this bar
        closes, highs, lows = self.closes, self.highs, self.lows
        closes.append(c)
        highs.append(h)
        lows.append(l)
        (
            n_sma0, n_sma1, lb_sma0, lb_sma1, n_ema0, n_ema1, n_ema2, n_ema3, lb_ema0, lb_ema1, lb_ema2,
            lb_ema3, k_ema0, k_ema1, k_ema2, k_ema3, n_rsi, rsi_m1, inv_rsi,
            fast, slow, sig, k_fast, k_slow, k_sig, fast_from, lb_line, lb_macd,
            n_bb, lb_bb, inv_bb, dev_up, dev_dn, n_atr, alpha_atr, beta_atr,
            n_fastk, n_slowk, n_slowd, lb_fastk, lb_slowk, lb_stoch, n_willr, lb_willr,
            n_wma, lb_wma, wma_divider, n_adx, adx_m1, lb_adx, n_cci, lb_cci, n_mfi, n_roc, trim_at,
        ) = self._const  # fmt: skip
        (
            prev_c, prev_h, prev_l, sma0, sma1, ema0, ema1, ema2, ema3, gain, loss,
            m_fast, m_slow, m_sig, bb_total, bb_shift, bb_v1, bb_v2, bb_reseed, atr,
            s_hi, s_hi_i, s_lo, s_lo_i, k_total, d_total, w_hi, w_hi_i, w_lo, w_lo_i,
            obv, wma_sub, wma_sum, wma_trail, wma_reseed, pdm, mdm, tr_sum, adx, prev_tp,
            mf_pos, mf_neg, mf_null,
        ) = self.scalars  # fmt: skip

        # SMA: running total, the new close added before the output, the oldest removed after.
        sma0 += c
        if t >= lb_sma0:
            ma50 = sma0 / n_sma0
            sma0 -= closes[i - lb_sma0]
        else:
            ma50 = None
        sma1 += c
        if t >= lb_sma1:
            ma200 = sma1 / n_sma1
            sma1 -= closes[i - lb_sma1]
        else:
            ma200 = None

        # EMA: the scalar holds the seed sum until bar n-1, then the average. TA-Lib fuses the
        # (x - ema) * k + ema step into one fma; without fma it rounds twice (last bit, rarely).
        if t > lb_ema0:
            ema12 = ema0 = (c - ema0) * k_ema0 + ema0
        elif t == lb_ema0:
            ema12 = ema0 = (ema0 + c) / n_ema0
        else:
            ema0 += c
            ema12 = None
        if t > lb_ema1:
            ema26 = ema1 = (c - ema1) * k_ema1 + ema1
        elif t == lb_ema1:
            ema26 = ema1 = (ema1 + c) / n_ema1
        else:
            ema1 += c
            ema26 = None
        if t > lb_ema2:
            ema50 = ema2 = (c - ema2) * k_ema2 + ema2
        elif t == lb_ema2:
            ema50 = ema2 = (ema2 + c) / n_ema2
        else:
            ema2 += c
            ema50 = None
        if t > lb_ema3:
            ema200 = ema3 = (c - ema3) * k_ema3 + ema3
        elif t == lb_ema3:
            ema200 = ema3 = (ema3 + c) / n_ema3
        else:
            ema3 += c
            ema200 = None

        # RSI: sums of the first n gains and losses, then Wilder's (x*(n-1) + new) * (1/n).
        rsi = None
        if t:
            change = c - prev_c
            if t > n_rsi:
                loss *= rsi_m1
                gain *= rsi_m1
            if change > 0.0:
                gain += change
            else:
                loss -= change
            if t >= n_rsi:
                loss *= inv_rsi
                gain *= inv_rsi
                total = gain + loss
                rsi = 100.0 * (gain / total) if total > 0.0 else 0.0

        # MACD: fast and slow seeds end on bar slow-1; the signal is seeded from the MACD values.
        # The EMA steps are fused in TA-Lib, as above.
        macd = macd_signal = macd_histogram = None
        if t > lb_line:
            m_fast = (c - m_fast) * k_fast + m_fast
            m_slow = (c - m_slow) * k_slow + m_slow
        elif t == lb_line:
            m_fast = (m_fast + c) / fast
            m_slow = (m_slow + c) / slow
        else:
            m_slow += c
            if t >= fast_from:
                m_fast += c
        if t >= lb_line:
            line = m_fast - m_slow
            if t > lb_macd:
                m_sig = (line - m_sig) * k_sig + m_sig
            elif t == lb_macd:
                m_sig = (m_sig + line) / sig
            else:
                m_sig += line
            if t >= lb_macd:
                macd, macd_signal, macd_histogram = line, m_sig, line - m_sig

        # Bollinger: SMA middle band; variance from the closes minus a shift, re-anchored on the
        # window when it cancels, when a large close leaves, or every 32 periods.
        bb_upper = bb_middle = bb_lower = None
        if not t:
            bb_shift = c
        bb_total += c
        dev = c - bb_shift
        bb_v1 += dev
        bb_v2 += dev * dev
        if t >= lb_bb:
            mean1 = bb_v1 * inv_bb
            variance = bb_v2 * inv_bb - mean1 * mean1
            bb_middle = bb_total / n_bb
            oldest = closes[i - lb_bb]
            bb_total -= oldest
            dev = oldest - bb_shift
            bb_v1 -= dev
            dev *= dev
            bb_v2 -= dev
            bb_reseed -= 1
            if variance < 0.000001 * (bb_v2 * inv_bb) or dev > 1000000.0 * bb_v2 or bb_reseed <= 0:
                bb_shift, bb_v1, bb_v2, variance = _reanchored_variance(closes[i - lb_bb : i + 1], inv_bb)
                bb_reseed = 32 * n_bb
            std = math.sqrt(variance) if variance > 0.0 else 0.0
            if dev_up == dev_dn:
                width = std * dev_up
                bb_upper, bb_lower = bb_middle + width, bb_middle - width
            else:  # TA-Lib fuses the upper band's multiply-add here, not the lower's
                bb_upper, bb_lower = bb_middle + std * dev_up, bb_middle - std * dev_dn

        # True range (bar 0 has none: no previous close).
        if t:
            true_range = h - l
            gap = abs(prev_c - h)
            if gap > true_range:
                true_range = gap
            gap = abs(prev_c - l)
            if gap > true_range:
                true_range = gap

        # ATR: SMA of the first n true ranges, then alpha*tr + beta*atr (one fma in TA-Lib).
        atr_out = None
        if t > n_atr:
            atr_out = atr = alpha_atr * true_range + beta_atr * atr
        elif t == n_atr:
            atr_out = atr = (atr + true_range) / n_atr
        elif t:
            atr += true_range

        # Stochastic: fast %K against the window's extremes (cached with their bar, rescanned when
        # that bar leaves the window), slow %K and %D as TA-Lib SMAs.
        stoch_k = stoch_d = None
        fastk = slowk = 0.0
        if t >= lb_fastk:
            first = t - lb_fastk
            if s_lo_i < first:
                window = lows[i - lb_fastk : i + 1]
                s_lo = min(window)
                s_lo_i = first + window.index(s_lo)
            elif l <= s_lo:
                s_lo, s_lo_i = l, t
            if s_hi_i < first:
                window = highs[i - lb_fastk : i + 1]
                s_hi = max(window)
                s_hi_i = first + window.index(s_hi)
            elif h >= s_hi:
                s_hi, s_hi_i = h, t
            span = s_hi - s_lo
            if abs(span) > _EPSILON * (abs(s_hi) + abs(s_lo)):
                fastk = 100.0 * ((c - s_lo) / span)
        self.fastk.append(fastk)
        if t >= lb_fastk:
            k_total += fastk
            if t >= lb_slowk:
                slowk = k_total / n_slowk
                k_total -= self.fastk[i + 1 - n_slowk]
        self.slowk.append(slowk)
        if t >= lb_slowk:
            d_total += slowk
            if t >= lb_stoch:
                stoch_k, stoch_d = slowk, d_total / n_slowd
                d_total -= self.slowk[i + 1 - n_slowd]

        # Williams %R: the stochastic's window when the periods agree, else its own.
        willr = None
        if t >= lb_willr:
            if n_willr == n_fastk:
                w_hi, w_lo = s_hi, s_lo
            else:
                first = t - lb_willr
                if w_lo_i < first:
                    window = lows[i - lb_willr : i + 1]
                    w_lo = min(window)
                    w_lo_i = first + window.index(w_lo)
                elif l <= w_lo:
                    w_lo, w_lo_i = l, t
                if w_hi_i < first:
                    window = highs[i - lb_willr : i + 1]
                    w_hi = max(window)
                    w_hi_i = first + window.index(w_hi)
                elif h >= w_hi:
                    w_hi, w_hi_i = h, t
            span = w_hi - w_lo
            willr = -100.0 * ((w_hi - c) / span) if abs(span) > _EPSILON * (abs(w_hi) + abs(w_lo)) else 0.0

        # OBV from the first volume.
        if not t:
            obv = v
        elif c > prev_c:
            obv += v
        elif c < prev_c:
            obv -= v

        # WMA: TA-Lib's periodSum/periodSub recurrence, rebuilt from the window every 8 periods.
        if t >= lb_wma:
            wma_sub += c
            wma_sub -= wma_trail
            wma_sum += c * n_wma
            wma_reseed -= 1
            if wma_reseed <= 0:
                wma_reseed = 8 * n_wma
                wma_sub = wma_sum = 0.0
                weight = 1
                for x in closes[i - lb_wma : i + 1]:
                    wma_sub += x
                    wma_sum += x * weight
                    weight += 1
            wma_trail = closes[i - lb_wma]
            wma = wma_sum / wma_divider
            wma_sum -= wma_sub
        else:
            wma_sub += c
            wma_sum += c * (t + 1)
            wma = None

        # ADX, +DI, -DI: DM and TR summed over bars 1..n-1, then Wilder's x - x/n + new.
        adx_out = plus_di = minus_di = None
        if t:
            up = h - prev_h
            down = prev_l - l
            plus_dm = up if up - down > 0.0 and up > 0.0 else 0.0
            minus_dm = down if down - up > 0.0 and down > 0.0 else 0.0
            if t >= n_adx:
                mdm = mdm - mdm / n_adx + minus_dm
                pdm = pdm - pdm / n_adx + plus_dm
                tr_sum = tr_sum - tr_sum / n_adx + true_range
                dx = None
                if tr_sum > 0.0:
                    minus_di = 100.0 * (mdm / tr_sum)
                    plus_di = 100.0 * (pdm / tr_sum)
                    di_sum = minus_di + plus_di
                    if not -_EPSILON < di_sum < _EPSILON:
                        dx = 100.0 * (abs(minus_di - plus_di) / di_sum)
                else:
                    minus_di = plus_di = 0.0
                if t > lb_adx:
                    if dx is not None:
                        adx = (adx * adx_m1 + dx) / n_adx
                    adx_out = adx
                else:
                    if dx is not None:
                        adx += dx
                    if t == lb_adx:
                        adx_out = adx = adx / n_adx
            else:
                mdm += minus_dm
                pdm += plus_dm
                tr_sum += true_range

        # CCI: TA-Lib sums its circular buffer slot by slot (slot = bar index mod n), so sum the
        # window in that order; flatness is judged against the mean's own magnitude.
        tp = (h + l + c) / 3.0
        tps = self.tps
        tps.append(tp)
        cci = None
        if t >= lb_cci:
            start = i - lb_cci
            split = start + (n_cci - (t + 1) % n_cci) % n_cci
            slots = tps[split : i + 1] + tps[start:split]
            mean = _naive_sum(slots) / n_cci
            mean_dev = 0.0
            for x in slots:
                mean_dev += abs(x - mean)
            mean_dev /= n_cci
            away = tp - mean
            scale = _EPSILON * abs(mean)
            cci = away / (0.015 * mean_dev) if abs(away) > scale and abs(mean_dev) > scale else 0.0

        # MFI: positive and negative money flow over the window.
        mfi = None
        pos = neg = 0.0
        if t:
            if t > n_mfi:
                mf_pos -= self.pos_flow[i - n_mfi]
                mf_neg -= self.neg_flow[i - n_mfi]
            change = tp - prev_tp
            flow = 0.0 if abs(change) <= _EPSILON * (abs(tp) + abs(prev_tp)) else tp * v
            if change < 0.0:
                neg = flow
            else:
                pos = flow
            mf_pos += pos
            mf_neg += neg
            mf_null = 0 if flow else mf_null + 1
            if mf_null >= n_mfi:
                mf_null = n_mfi
                mf_pos = mf_neg = 0.0
            if t >= n_mfi:
                total = mf_pos + mf_neg
                if total > 0.0:
                    mfi = 100.0 * ((0.0 if mf_pos < 0.0 else total if mf_pos > total else mf_pos) / total)
                else:
                    mfi = 0.0
        self.pos_flow.append(pos)
        self.neg_flow.append(neg)

        # ROC in percent.
        if t >= n_roc:
            old = closes[i - n_roc]
            roc = (c / old - 1.0) * 100.0 if old != 0.0 else 0.0
        else:
            roc = None

        self.scalars = [
            c, h, l, sma0, sma1, ema0, ema1, ema2, ema3, gain, loss,
            m_fast, m_slow, m_sig, bb_total, bb_shift, bb_v1, bb_v2, bb_reseed, atr,
            s_hi, s_hi_i, s_lo, s_lo_i, k_total, d_total, w_hi, w_hi_i, w_lo, w_lo_i,
            obv, wma_sub, wma_sum, wma_trail, wma_reseed, pdm, mdm, tr_sum, adx, tp,
            mf_pos, mf_neg, mf_null,
        ]  # fmt: skip
        self.t = t + 1
        if i >= trim_at:
            self._trim()
        return Indicators(
            candle.exchange, candle.symbol, candle.interval, candle.open_time, c, candle.revision,
            rsi, ma50, ma200, ema12, ema26, ema50, ema200, macd, macd_signal, macd_histogram,
            bb_upper, bb_middle, bb_lower, atr_out, stoch_k, stoch_d, obv, wma, adx_out, plus_di,
            minus_di, cci, willr, mfi, roc,
        )  # fmt: skip

    def _trim(self) -> None:
        drop = len(self.closes) - _kept_bars(self.cfg)
        for name in _BUFFERS:
            del getattr(self, name)[:drop]
        self.base += drop

    # -- history, rollback, replay ------------------------------------------------------------------

    def feed(self, candle: Candle) -> Indicators:
        """Append a final candle newer than every kept one, remembering how to undo it."""
        before = self.scalars
        output = self.step(candle)
        entries = self.entries
        if len(entries) == entries.maxlen:
            self._leave(entries[0][0])
        entries.append((candle, before, output))
        return output

    def _leave(self, candle: Candle) -> None:
        """Note the open time of a candle leaving the kept history (it can no longer be revised)."""
        gone, at = self.gone, candle.open_time
        step = candle.close_time + 1 - at
        if gone and gone[-2] == step and gone[-3] + step * gone[-1] == at:
            gone[-1] += 1
        else:
            gone += (at, step, 1)
            if len(gone) > 3 * _GONE_RUNS:
                del gone[:3]

    def _left(self, open_time: int) -> bool:
        """True when a candle at ``open_time`` was applied and has left the kept history."""
        gone = self.gone
        for i in range(0, len(gone), 3):
            first, step, count = gone[i : i + 3]
            if first <= open_time < first + step * count and (open_time - first) % step == 0:
                return True
        return False

    def _restore(self, scalars: list[Any], bars: int) -> None:
        """Go back to the state after ``bars`` bars, whose scalars were ``scalars``."""
        self.scalars = scalars
        self.t = bars
        keep = bars - self.base
        for name in _BUFFERS:
            del getattr(self, name)[keep:]

    def rollback(self, depth: int) -> list[Candle]:
        """Undo the last ``depth`` kept candles and return them, oldest first."""
        undone = [self.entries.pop() for _ in range(depth)][::-1]
        self._restore(undone[0][1], self.t - depth)
        return [candle for candle, _, _ in undone]

    def apply(self, candle: Candle) -> list[Indicators]:
        """Feed, revise or insert ``candle``; return its record and then every record it changed."""
        entries = self.entries
        if not entries or candle.open_time > entries[-1][0].open_time:
            return [self.feed(candle)]
        if candle.open_time < entries[0][0].open_time and len(entries) < self.t:
            if candle.revision <= 0 and self._left(candle.open_time):
                return []  # re-delivered (a backfill run again): the applied candle had this revision or a later one
            raise RevisionTooOld(
                f"candle {self.key} {candle.open_time} rev {candle.revision} is older than the kept history "
                f"(oldest kept {entries[0][0].open_time}, history {self.cfg.history})"
            )
        newer = 0
        for kept, _, _ in reversed(entries):
            if kept.open_time <= candle.open_time:
                break
            newer += 1
        same = len(entries) - newer - 1
        if same >= 0 and entries[same][0].open_time == candle.open_time:
            kept, _, output = entries[same]
            if candle.revision <= kept.revision:
                return [output]  # re-delivery, or an older revision: nothing changes
            later = self.rollback(newer + 1)[1:]
        else:
            later = self.rollback(newer)
        return [self.feed(c) for c in (candle, *later)]

    def peek(self, candle: Candle) -> Indicators:
        """Values as if ``candle`` (final or not) were the next bar, leaving the state as it was."""
        if self.entries and candle.open_time <= self.entries[-1][0].open_time:
            raise BadCandle(
                f"peek at {self.key} {candle.open_time} needs a candle newer than the last one "
                f"({self.entries[-1][0].open_time})"
            )
        before, bars = self.scalars, self.t
        output = self.step(candle)
        self._restore(before, bars)
        return output

    # -- serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state as of just before the oldest kept candle, plus the kept candles.

        Replaying is bit-exact, so ``from_dict`` rebuilds the current state, the kept records and
        the rollback points by feeding the kept candles again, and the dict stays small.
        """
        start = self.t - len(self.entries)
        keep_from = max(self.base, start - self.cfg.window)
        first, last = keep_from - self.base, start - self.base
        return {
            "t": start,
            "base": keep_from,
            "scalars": list(self.entries[0][1] if self.entries else self.scalars),
            "buffers": {name: list(getattr(self, name)[first:last]) for name in _BUFFERS},
            "candles": [candle.to_avro() for candle, _, _ in self.entries],
            "gone": list(self.gone),
        }

    @classmethod
    def from_dict(cls, cfg: IndicatorConfig, key: str, d: dict[str, Any]) -> IndicatorState:
        state = cls(cfg, key)
        state.t = d["t"]
        state.base = d["base"]
        state.scalars = list(d["scalars"])
        for name in _BUFFERS:
            setattr(state, name, list(d["buffers"][name]))
        for candle in d["candles"]:
            state.feed(Candle.from_avro(candle))
        state.gone = list(d.get("gone", ()))  # absent in checkpoints from before it was kept
        return state


def _reanchored_variance(window: Sequence[float], inv: float) -> tuple[float, float, float, float]:
    """TA-Lib's Bollinger re-anchor: shift to the window mean and rebuild the shifted sums.

    Returns the new shift, the sums with the window's oldest close already removed (as the
    running sums are after each bar), and the window's variance, floored to 0 below 1e-12 of the
    mean squared deviation.
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


@dataclass(slots=True)
class IndicatorEngine:
    """Indicator states of every series, keyed ``exchange:symbol:interval`` (``Candle.key``).

    The shell publishes every record ``process`` returns (a revision re-publishes later records;
    stores upsert by key and open_time), dead-letters ``IndicatorError`` with its ``reason``,
    may ``peek`` at forming candles, checkpoints ``snapshot()`` with orjson and comes back with
    ``restore``, or ``seed``s a series from stored candles when it has no checkpoint.
    """

    config: IndicatorConfig = field(default_factory=IndicatorConfig)
    series: dict[str, IndicatorState] = field(default_factory=dict)
    # The same states by (exchange, symbol, interval): cheaper per candle than formatting the key.
    _by_parts: dict[tuple[str, str, str], IndicatorState] = field(default_factory=dict, repr=False)

    def _state(self, key: str) -> IndicatorState:
        state = self.series.get(key)
        if state is None:
            state = self.series[key] = IndicatorState(self.config, key)
        return state

    def _state_of(self, candle: Candle) -> IndicatorState:
        parts = (candle.exchange, candle.symbol, candle.interval)
        state = self._by_parts.get(parts)
        if state is None:
            state = self._by_parts[parts] = self._state(candle.key)
        return state

    @staticmethod
    def _check(candle: Candle) -> None:
        problem = candle_problem(candle)
        if problem is not None:
            raise BadCandle(f"candle {candle.key} {candle.open_time}: {problem}")

    def process(self, candle: Candle) -> list[Indicators]:
        """Apply a final candle; return its record first, then every later record it changed.

        A new candle gives one record. A revision (same open_time, higher revision) or a late
        candle (an older open_time not seen yet) recomputes from there on and also returns the
        records of every later kept candle. A re-delivery (same open_time, same or lower revision)
        returns the kept record and changes nothing; one older than the kept history returns
        nothing, when its revision is 0 (as backfills send). Raises ``BadCandle`` or ``RevisionTooOld``.
        """
        if not candle.is_final:
            raise BadCandle(f"candle {candle.key} {candle.open_time} is not final (peek takes a forming candle)")
        self._check(candle)
        return self._state_of(candle).apply(candle)

    def update(self, candle: Candle) -> Indicators:
        """The record of a final candle (``process`` also returns the later records a revision changed).
        Raises ``RevisionTooOld`` also for a re-delivery whose record has left the kept history."""
        if candle.is_final and candle_problem(candle) is None:
            state = self._by_parts.get((candle.exchange, candle.symbol, candle.interval)) or self._state_of(candle)
            entries = state.entries
            if entries and candle.open_time > entries[-1][0].open_time:
                return state.feed(candle)
            records = state.apply(candle)
        else:
            records = self.process(candle)
        if not records:
            raise RevisionTooOld(f"candle {candle.key} {candle.open_time} was applied already and its record has left the kept history")
        return records[0]

    def peek(self, candle: Candle) -> Indicators:
        """Values of a forming candle as if it closed now; the state does not change."""
        self._check(candle)
        return self._state_of(candle).peek(candle)

    def seed(self, key: str, candles: Iterable[Candle]) -> Indicators | None:
        """Restart series ``key`` from its history: candles in any order, highest revision per open_time.

        Returns the record of the newest candle, or None when there is none.
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
        """The whole engine as a JSON-serialisable dict (its floats round-trip exactly through orjson)."""
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
