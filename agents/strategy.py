"""Strategies: weighted rules over indicators, on-chain zones and sentiment, read from a TOML file.

Pure: :func:`load_strategy` validates a file (pydantic, every error names its field) and
:func:`evaluate` turns what was known at one candle's close into a :class:`Decision`: direction,
confidence in [0, 1] and one human-readable reason per rule that fired, with its values.

Scoring. Every directional rule votes +1 (long), -1 (short) or 0 with its ``weight``; the net
score is the weighted votes over the sum of the weights of the rules that had their inputs (so a
rule still warming up neither helps nor hurts). ``net >= entry_threshold`` is long, ``net <=
-entry_threshold`` short, anything else flat. Confidence is ``|net|`` for long and short, and
``1 - |net| / entry_threshold`` for flat (how far from either side). Filters (``atr_filter``) do
not vote: a filter that blocks a long or short makes it flat (confidence 1), with its reason.

No look-ahead. ``evaluate`` sees only the candle, its indicators, the previous candle's
indicators (for crosses) and context values whose window ended, plus the rule's
``known_after_hours``, at or before the close: :meth:`agents.asof.AsOfTable.latest` is the one
place that decides the latter.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents.asof import AsOfTable
from agents.candles import parse_interval
from agents.risk import RiskConfig
from schemas.models import Candle, Indicators

Direction = Literal["long", "short", "flat"]

# Indicator fields a moving-average cross can name (both must be of the record).
MA_FIELDS = ("ma50", "ma200", "ema12", "ema26", "ema50", "ema200", "wma", "bb_middle")
# Context fields and the record type that carries them.
ONCHAIN_FIELDS = ("mvrv", "nupl")
SENTIMENT_FIELDS = ("mean_score", "fear_greed_value")


class StrategyError(ValueError):
    """A strategy file that cannot be used; the message names the file and the field."""


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    weight: float = Field(1.0, gt=0, le=1000, description="Vote weight")
    label: str | None = Field(None, description="Name shown in reasons (default: the kind)")


class RsiRule(_Rule):
    """RSI below ``below`` votes long (oversold), above ``above`` votes short (overbought)."""

    kind: Literal["rsi"]
    below: float | None = Field(30.0, ge=0, le=100)
    above: float | None = Field(70.0, ge=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> RsiRule:
        if self.below is None and self.above is None:
            raise ValueError("rsi needs below, above or both")
        if self.below is not None and self.above is not None and self.below >= self.above:
            raise ValueError(f"below ({self.below}) must be lower than above ({self.above})")
        return self


class MacdCrossRule(_Rule):
    """MACD line crossing above its signal line on this candle votes long, below short."""

    kind: Literal["macd_cross"]


class BollingerRule(_Rule):
    """A touch of a band (candle low/high reaching it). ``reversion``: lower band long, upper
    short; ``breakout``: close above the upper band long, below the lower short."""

    kind: Literal["bollinger"]
    mode: Literal["reversion", "breakout"] = "reversion"


class MaCrossRule(_Rule):
    """``fast`` crossing above ``slow`` on this candle votes long, below short; with
    ``trend = true`` it votes on every candle by which side ``fast`` is on."""

    kind: Literal["ma_cross"]
    fast: Literal[MA_FIELDS] = "ema12"  # type: ignore[valid-type]
    slow: Literal[MA_FIELDS] = "ema26"  # type: ignore[valid-type]
    trend: bool = False

    @model_validator(mode="after")
    def _distinct(self) -> MaCrossRule:
        if self.fast == self.slow:
            raise ValueError(f"fast and slow are both {self.fast!r}")
        return self


class AtrFilter(_Rule):
    """Filter, no vote: ATR as a percentage of the close must lie in [min_pct, max_pct]
    (too quiet: no edge over costs; too wild: stops too wide)."""

    kind: Literal["atr_filter"]
    min_pct: float = Field(0.0, ge=0)
    max_pct: float = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> AtrFilter:
        if self.min_pct >= self.max_pct:
            raise ValueError(f"min_pct ({self.min_pct}) must be lower than max_pct ({self.max_pct})")
        return self


class _ZoneRule(_Rule):
    below: float | None = None  # value below: long
    above: float | None = None  # value above: short
    known_after_hours: float = Field(0.0, ge=0, description="How long after its window's end a value is published")
    max_age_hours: float = Field(72.0, gt=0, description="Values whose window started longer ago are ignored (the rule does not vote)")
    contrarian: bool = True  # False flips the votes (follow the crowd)
    asset: str | None = Field(None, description="Only values of records naming this asset (or symbol); unset: any")

    @model_validator(mode="after")
    def _order(self) -> _ZoneRule:
        if self.below is None and self.above is None:
            raise ValueError(f"{self.kind} needs below, above or both")  # type: ignore[attr-defined]
        if self.below is not None and self.above is not None and self.below >= self.above:
            raise ValueError(f"below ({self.below}) must be lower than above ({self.above})")
        return self


class OnchainZoneRule(_ZoneRule):
    """An on-chain valuation zone (record ``onchain_metric``): e.g. MVRV below 1 long, above 3.5 short."""

    kind: Literal["onchain_zone"]
    metric: Literal[ONCHAIN_FIELDS]  # type: ignore[valid-type]


class SentimentRule(_ZoneRule):
    """Sentiment or Fear & Greed extremes (record ``sentiment_aggregate``): extreme fear long,
    extreme greed short (``contrarian = false`` flips that)."""

    kind: Literal["sentiment"]
    field: Literal[SENTIMENT_FIELDS] = "fear_greed_value"  # type: ignore[valid-type]


Rule = Annotated[
    RsiRule | MacdCrossRule | BollingerRule | MaCrossRule | AtrFilter | OnchainZoneRule | SentimentRule,
    Field(discriminator="kind"),
]


class Strategy(BaseModel):
    """One strategy file: its rules and, in ``[risk]``, how its intents are sized and limited.
    ``symbols`` empty = every symbol of the interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(min_length=1, max_length=40)
    description: str = ""
    interval: str = "1m"
    exchange: str | None = None
    symbols: tuple[str, ...] = ()
    entry_threshold: float = Field(0.5, gt=0, le=1, description="Net score needed for long/short")
    rules: tuple[Rule, ...] = Field(min_length=1)
    risk: RiskConfig = Field(default_factory=RiskConfig, description="The [risk] table: sizing and limits of the trade intents")

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        parse_interval(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="after")
    def _votes(self) -> Strategy:
        if all(isinstance(r, AtrFilter) for r in self.rules):
            raise ValueError("rules: at least one rule must vote (atr_filter only filters)")
        return self

    @property
    def interval_ms(self) -> int:
        return parse_interval(self.interval)

    def wants(self, exchange: str, symbol: str, interval: str) -> bool:
        return (
            interval == self.interval
            and (self.exchange is None or exchange == self.exchange)
            and (not self.symbols or symbol in self.symbols)
        )


def _where(loc: Sequence[int | str], data: dict) -> str:
    """``rules.2.rsi.below`` -> ``rules[2].below`` (the discriminator tag is pydantic's, not the file's)."""
    out = ""
    node: object = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # the union's tag
        out += f".{part}" if out else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return out


_NAMED = re.compile(r"^([a-z_]+) \(")


def parse_strategy(data: dict, source: str = "strategy") -> Strategy:
    """Validate a strategy's data; :class:`StrategyError` lists every problem with its field."""
    try:
        return Strategy.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["loc"][:1] == ("rules",) and len(e["loc"]) > 1 for e in errors):
            # pydantic also counts the tuple short of the rules that failed: noise next to their errors
            errors = [e for e in errors if not (e["loc"] == ("rules",) and e["type"] == "too_short")]
        problems = []
        for e in errors:
            where, msg = _where(e["loc"], data), e["msg"].removeprefix("Value error, ")
            named = _NAMED.match(msg) if e["type"] == "value_error" else None
            if named:  # a check across fields names the first one it is about: point at it
                where = f"{where}.{named.group(1)}" if where else named.group(1)
            problems.append(f"{where}: {msg}" if where else msg)  # a check of the whole file names its field itself
        raise StrategyError(f"{source}: " + "; ".join(problems)) from None


def load_strategy(path: Path | str) -> Strategy:
    """Read and validate a TOML strategy file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise StrategyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise StrategyError(f"{path}: not valid TOML ({exc})") from None
    return parse_strategy(data, str(path))


@dataclass(frozen=True, slots=True)
class Decision:
    direction: Direction
    confidence: float
    score: float  # net score in [-1, 1]
    reasons: tuple[str, ...]
    onchain_time: int | None  # time (ms) of the newest on-chain value used, None if none
    sentiment_time: int | None


def context_rules(strategy: Strategy) -> list[OnchainZoneRule | SentimentRule]:
    """The rules that read the context table."""
    return [r for r in strategy.rules if isinstance(r, OnchainZoneRule | SentimentRule)]


def context_field(rule: OnchainZoneRule | SentimentRule) -> str:
    return rule.metric if isinstance(rule, OnchainZoneRule) else rule.field


def context_complete(strategy: Strategy, table: AsOfTable, decision_ms: int) -> bool:
    """Whether the table has every value the strategy's context rules could see at ``decision_ms``."""
    return all(table.complete(context_field(r), r.asset, decision_ms, int(r.known_after_hours * 3_600_000)) for r in context_rules(strategy))


def _fmt(x: float) -> str:
    return f"{x:,.2f}" if abs(x) >= 100 else f"{x:.4g}"


def _cross(prev_fast: float | None, prev_slow: float | None, fast: float | None, slow: float | None) -> int:
    if None in (prev_fast, prev_slow, fast, slow):
        return 0
    if prev_fast <= prev_slow and fast > slow:  # type: ignore[operator]
        return 1
    if prev_fast >= prev_slow and fast < slow:  # type: ignore[operator]
        return -1
    return 0


def evaluate(
    strategy: Strategy,
    candle: Candle,
    ind: Indicators,
    prev: Indicators | None,
    context: AsOfTable | None = None,
) -> Decision:
    """The decision at ``candle``'s close from ``ind`` (its indicators), ``prev`` (the previous
    candle's, or None) and ``context`` (the on-chain and sentiment table)."""
    close_ms = candle.close_time + 1
    voted = total = 0.0
    reasons: list[str] = []
    blocked: list[str] = []
    onchain_time = sentiment_time = None
    for rule in strategy.rules:
        name = rule.label or rule.kind
        vote = 0
        why = ""
        has_input = True
        if isinstance(rule, RsiRule):
            rsi = ind.rsi
            has_input = rsi is not None
            if rsi is not None and rule.below is not None and rsi < rule.below:
                vote, why = 1, f"RSI {rsi:.1f} < {rule.below:g}"
            elif rsi is not None and rule.above is not None and rsi > rule.above:
                vote, why = -1, f"RSI {rsi:.1f} > {rule.above:g}"
        elif isinstance(rule, MacdCrossRule):
            has_input = prev is not None and None not in (ind.macd, ind.macd_signal, prev.macd, prev.macd_signal)
            if has_input:
                assert prev is not None
                vote = _cross(prev.macd, prev.macd_signal, ind.macd, ind.macd_signal)
                if vote:
                    word = "above" if vote > 0 else "below"
                    why = f"MACD {_fmt(ind.macd)} crossed {word} signal {_fmt(ind.macd_signal)}"  # type: ignore[arg-type]
        elif isinstance(rule, BollingerRule):
            up, lo = ind.bb_upper, ind.bb_lower
            has_input = up is not None and lo is not None
            if has_input:
                if rule.mode == "reversion":
                    if candle.low <= lo:  # type: ignore[operator]
                        vote, why = 1, f"low {_fmt(candle.low)} touched lower band {_fmt(lo)}"  # type: ignore[arg-type]
                    elif candle.high >= up:  # type: ignore[operator]
                        vote, why = -1, f"high {_fmt(candle.high)} touched upper band {_fmt(up)}"  # type: ignore[arg-type]
                elif candle.close > up:  # type: ignore[operator]
                    vote, why = 1, f"close {_fmt(candle.close)} broke above upper band {_fmt(up)}"  # type: ignore[arg-type]
                elif candle.close < lo:  # type: ignore[operator]
                    vote, why = -1, f"close {_fmt(candle.close)} broke below lower band {_fmt(lo)}"  # type: ignore[arg-type]
        elif isinstance(rule, MaCrossRule):
            fast, slow = getattr(ind, rule.fast), getattr(ind, rule.slow)
            if rule.trend:
                has_input = fast is not None and slow is not None
                if has_input:
                    vote = 1 if fast > slow else -1 if fast < slow else 0
                    if vote:
                        why = f"{rule.fast} {_fmt(fast)} {'>' if vote > 0 else '<'} {rule.slow} {_fmt(slow)}"
            else:
                has_input = prev is not None and None not in (fast, slow, getattr(prev, rule.fast), getattr(prev, rule.slow))
                if has_input:
                    assert prev is not None
                    vote = _cross(getattr(prev, rule.fast), getattr(prev, rule.slow), fast, slow)
                    if vote:
                        why = f"{rule.fast} {_fmt(fast)} crossed {'above' if vote > 0 else 'below'} {rule.slow} {_fmt(slow)}"
        elif isinstance(rule, AtrFilter):
            if ind.atr is not None and ind.close > 0:
                pct = 100.0 * ind.atr / ind.close
                if pct < rule.min_pct:
                    blocked.append(f"{name}: ATR {pct:.3f}% of close < {rule.min_pct:g}%")
                elif pct > rule.max_pct:
                    blocked.append(f"{name}: ATR {pct:.3f}% of close > {rule.max_pct:g}%")
            else:
                blocked.append(f"{name}: no ATR yet")
            continue
        else:  # on-chain zone or sentiment
            fld = context_field(rule)
            lag, age = int(rule.known_after_hours * 3_600_000), int(rule.max_age_hours * 3_600_000)
            item = context.latest(fld, rule.asset, close_ms, lag, age) if context is not None else None
            has_input = item is not None
            if item is not None:
                if isinstance(rule, OnchainZoneRule):
                    onchain_time = item.time if onchain_time is None else max(onchain_time, item.time)
                else:
                    sentiment_time = item.time if sentiment_time is None else max(sentiment_time, item.time)
                sign = 1 if rule.contrarian else -1
                if rule.below is not None and item.value < rule.below:
                    vote, why = sign, f"{fld} {_fmt(item.value)} < {rule.below:g}"
                elif rule.above is not None and item.value > rule.above:
                    vote, why = -sign, f"{fld} {_fmt(item.value)} > {rule.above:g}"
        if not has_input:
            continue
        total += rule.weight
        if vote:
            voted += vote * rule.weight
            reasons.append(f"{name}: {why} -> {'long' if vote > 0 else 'short'} (weight {rule.weight:g})")
    net = voted / total if total else 0.0
    net = 0.0 if not math.isfinite(net) else max(-1.0, min(1.0, net))
    direction: Direction = "flat"
    if net >= strategy.entry_threshold:
        direction = "long"
    elif net <= -strategy.entry_threshold:
        direction = "short"
    if blocked and direction != "flat":
        reasons.extend(f"blocked by {b}" for b in blocked)
        direction = "flat"
        confidence = 1.0
    elif direction == "flat":
        confidence = 1.0 - abs(net) / strategy.entry_threshold
    else:
        confidence = abs(net)
    return Decision(direction, round(confidence, 12), round(net, 12), tuple(reasons), onchain_time, sentiment_time)
