"""The on-chain agent: ``onchain-days`` and ``onchain-blocks`` -> ``onchain_metrics`` (per asset, day
and source) and ``onchain_block_metrics`` (per block), around :class:`agents.onchain.OnchainMetrics`.

Both inputs are keyed by asset, so an asset's provider rows (whose prices SOPR needs) and its
blocks meet in one partition's state. A record the metrics refuse (nonsense figures, a reorg or a
block reaching into a day already final) is rejected with the reason, never fatal.

The ``onchain_prices`` agent brings candle prices there: candles are keyed by exchange:symbol:interval,
so they cannot meet an asset's blocks in one partition; it turns the final daily candles of the
series named by ``ONCHAIN_PRICE_CANDLES`` into price rows (``onchain_day``, source
``candles:EXCHANGE:SYMBOL``) keyed by asset. The prices thereby enter the on-chain agent's input log,
so a replay gives the same rows (see :mod:`agents.onchain` for the priority and the rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import structlog
from prometheus_client import Counter

from agents.onchain import OnchainError, OnchainMetrics, candle_price, read_labels, read_price_candles
from agents.spec import AgentContext, AgentSpec, Emit, Inbound, Output, Reject
from schemas.models import OnchainBlockMetric

log = structlog.get_logger(__name__)

ONCHAIN_IN = Counter("tickflow_onchain_inputs_total", "Records read by the on-chain agent", ["record"])
ONCHAIN_OUT = Counter("tickflow_onchain_metrics_total", "On-chain metric rows emitted (first versions and revisions); source block: per-block rows", ["source"])


def exchange_labels(settings: object) -> dict[str, str]:
    """The ``address,entity`` CSV named by ONCHAIN_EXCHANGE_ADDRESSES, or none."""
    path = settings.agents.onchain_exchange_addresses
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        return read_labels(f)


class OnchainLogic:
    """One partition's on-chain state: the provider series and kept blocks of the assets it owns."""

    def __init__(self, ctx: AgentContext | None = None, *, labels: dict[str, str] | None = None, keep_days: int | None = None) -> None:
        settings = ctx.settings if ctx is not None else None
        if labels is None:
            labels = exchange_labels(settings) if settings is not None else {}
        if keep_days is None:
            keep_days = settings.agents.onchain_keep_days
        self.metrics = OnchainMetrics(labels, keep_days)

    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        out: list[Output] = []
        metrics = self.metrics
        for rec in records:
            ONCHAIN_IN.labels(rec.record).inc()
            try:
                if rec.record == "onchain_day":
                    rows = metrics.add_day(rec.value)
                elif rec.record == "onchain_block":
                    rows = metrics.add_block(rec.value)
                else:
                    out.append(Reject(rec.offset, f"the on-chain agent does not read {rec.record!r} records", rec.record))
                    continue
            except OnchainError as exc:
                out.append(Reject(rec.offset, str(exc), rec.record))
                continue
            for row in rows:
                if isinstance(row, OnchainBlockMetric):
                    ONCHAIN_OUT.labels("block").inc()
                    out.append(Emit("onchain_block_metric", row.asset, row))
                else:
                    ONCHAIN_OUT.labels(row.source).inc()
                    out.append(Emit("onchain_metric", row.asset, row))
        return out

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        return ()

    def snapshot(self) -> bytes:
        return self.metrics.snapshot()

    def restore(self, data: bytes) -> None:
        self.metrics.restore(data)


class CandlePriceLogic:
    """Final daily candles of the configured series -> the asset's price rows; other candles are not its business."""

    def __init__(self, ctx: AgentContext | None = None, *, series: dict[tuple[str, str], str] | None = None) -> None:
        if series is None:
            series = read_price_candles(ctx.settings.agents.onchain_price_candles if ctx is not None else "")
        self.series = series

    def on_batch(self, records: Sequence[Inbound]) -> Iterable[Output]:
        out: list[Output] = []
        for rec in records:
            c = rec.value
            asset = self.series.get((c.exchange, c.symbol))
            if asset is None or c.interval != "1d" or not c.is_final:
                continue
            try:
                row = candle_price(c, asset)
            except OnchainError as exc:
                out.append(Reject(rec.offset, str(exc), rec.record))
                continue
            out.append(Emit("onchain_day", asset, row))
        return out

    def on_timer(self, now: float, quiet_s: float) -> Iterable[Output]:
        return ()

    def snapshot(self) -> bytes:
        return b""  # stateless: a candle delivered again gives the same row, which the on-chain agent ignores

    def restore(self, data: bytes) -> None:
        return None


ONCHAIN_PRICES = AgentSpec(
    name="onchain_prices",
    inputs=("candle",),
    outputs=("onchain_day",),
    logic=CandlePriceLogic,
    enabled=lambda settings: bool(settings.agents.onchain_price_candles),
    description="Final daily candles of ONCHAIN_PRICE_CANDLES as price rows of their asset, for SOPR",
)

ONCHAIN = AgentSpec(
    name="onchain",
    inputs=("onchain_day", "onchain_block"),
    outputs=("onchain_metric", "onchain_block_metric"),
    logic=OnchainLogic,
    description="On-chain metrics (MVRV, NUPL, realized price, NVT, volatility, addresses, fees, flows, SOPR) per asset and UTC day",
)
