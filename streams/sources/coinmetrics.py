"""``coinmetrics:PATH``: a Coin Metrics community daily CSV (``btc.csv``, ``eth.csv``) as
``onchain_day`` records, one per row, keyed by the asset (the file name: ``btc``).

Only the columns the metrics read are taken; a column the file lacks (the ETH file has no
CapRealUSD) leaves its field null. A row with an unparsable day or number, a negative or
non-finite figure, or the wrong number of cells goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path

import structlog

from agents.onchain import provider_problem
from schemas.models import OnchainDay, day_ms
from streams.sources.base import BadInput, Record, Source, SourceItem

log = structlog.get_logger(__name__)

SOURCE = "coinmetrics"
# Coin Metrics column -> OnchainDay field
COLUMNS = {
    "PriceUSD": "price_usd",
    "CapMrktCurUSD": "market_cap_usd",
    "CapRealUSD": "realized_cap_usd",
    "SplyCur": "supply_native",
    "TxTfrValAdjUSD": "transfer_value_adj_usd",
    "AdrActCnt": "active_addresses",
    "TxCnt": "tx_count",
    "FeeTotNtv": "fees_native",
    "TxTfrValNtv": "transfer_volume_native",
}


def parse_rows(lines: Iterator[str], asset: str) -> Iterator[OnchainDay | BadInput]:
    """Rows of a Coin Metrics CSV as provider day rows, or ``BadInput`` with the reason (pure)."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header or header[0] != "time":
        yield BadInput(f"not a Coin Metrics CSV: the first column is {header[0] if header else None!r}, not 'time'", ",".join(header or []).encode())
        return
    index = {name: i for i, name in enumerate(header)}
    wanted = [(field, index[col]) for col, field in COLUMNS.items() if col in index]
    for cells in reader:
        if not cells:
            continue
        raw = ",".join(cells).encode()
        if len(cells) != len(header):
            yield BadInput(f"row has {len(cells)} cells, the header {len(header)}", raw)
            continue
        try:
            day = date.fromisoformat(cells[0][:10])
        except ValueError:
            yield BadInput(f"unparsable day {cells[0]!r}", raw)
            continue
        values: dict[str, float | None] = {}
        problem = None
        for field, i in wanted:
            text = cells[i].strip()
            if not text:
                values[field] = None
                continue
            try:
                v = float(text)
            except ValueError:
                problem = f"{header[i]} is {text!r}, not a number"
                break
            values[field] = v  # non-finite and negative values are refused by provider_problem below
        if problem is None:
            row = OnchainDay(asset, day_ms(day), SOURCE, **values)
            problem = provider_problem(row)
        if problem is not None:
            yield BadInput(f"{day}: {problem}", raw)
            continue
        yield row


class CoinMetricsSource(Source):
    """A Coin Metrics CSV, file order, as fast as the producer takes it."""

    def __init__(self, path: Path | str, *, asset: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no Coin Metrics file at {self.path}")
        self.asset = (asset or self.path.name.split(".")[0]).lower()
        self._stopped = False

    async def stream(self) -> AsyncIterator[SourceItem]:
        opener = gzip.open if self.path.suffix == ".gz" else open
        rows = bad = 0
        with opener(self.path, "rt", encoding="utf-8", newline="") as f:  # type: ignore[operator]
            for item in parse_rows(iter(f), self.asset):
                if self._stopped:
                    break
                if isinstance(item, BadInput):
                    bad += 1
                    yield item
                else:
                    rows += 1
                    yield Record("onchain_day", item.asset, item)
                if (rows + bad) % 256 == 0:
                    await asyncio.sleep(0)
        log.info("coinmetrics file read", path=str(self.path), asset=self.asset, rows=rows, bad=bad)

    async def aclose(self) -> None:
        self._stopped = True
