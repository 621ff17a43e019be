"""An event-time table of context values (on-chain, sentiment) read "as of" a decision time. Pure.

Each value belongs to a *series* (a table record's key, e.g. ``BTC`` or ``MARKET:1h``) and covers a
window ``[time, end)`` of event time; it is complete at ``end`` and published ``lag`` later (the
reading rule's ``known_after_hours``). The rule that makes reads deterministic, whatever the wall
clock did between the table's topic and the reader's own input:

1. **First published wins.** The first record of a (series, time) in the log is the value; later
   ones (revisions, re-deliveries) are ignored. A series' records are in one partition, in order,
   so "first" is a fact of the log, not of timing.
2. **Visible at T** when ``end + lag <= T``: nothing published after the decision is seen.
3. **Complete through T** when the series' newest window ``[t, e)`` leaves no room for an unseen
   one visible at T: the next window ends at ``e + period`` or later, so ``e + period + lag > T``.
   A reader waits until every series it reads is complete through its decision time (or a bounded
   wall-clock wait runs out, which the caller counts). A series never seen is not waited for.

Under 1-3 a read at T is a function of the table's log alone. Its limit: a window that is never
published (a gap in the source) or published later than ``lag`` makes readers wait for the bound,
and what they decide then may differ from a later replay that has it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TableValue:
    series: str
    time: int  # ms, window start (the record's own time)
    end: int  # ms, window end: complete from here on
    value: float | None  # None: the record had no value for this field


@dataclass
class _Series:
    times: list[int] = field(default_factory=list)  # sorted window starts
    values: list[TableValue] = field(default_factory=list)  # same order


@dataclass
class AsOfTable:
    """Values per field and series (see the module docstring for the read rule)."""

    fields: dict[str, dict[str, _Series]] = field(default_factory=dict)
    asset_of: dict[str, str] = field(default_factory=dict)  # series -> the asset it names

    def add(self, fld: str, series: str, asset: str | None, time: int, end: int, value: float | None) -> bool:
        """Store a value; False when its (field, series, time) was published before (first wins)."""
        s = self.fields.setdefault(fld, {}).setdefault(series, _Series())
        i = bisect.bisect_left(s.times, time)
        if i < len(s.times) and s.times[i] == time:
            return False
        s.times.insert(i, time)
        s.values.insert(i, TableValue(series, time, end, value))
        if asset:
            self.asset_of[series] = asset
        return True

    def _series(self, fld: str, asset: str | None) -> list[tuple[str, _Series]]:
        return sorted((k, s) for k, s in self.fields.get(fld, {}).items() if asset is None or self.asset_of.get(k) == asset)

    def latest(self, fld: str, asset: str | None, decision: int, lag: int, max_age: int) -> TableValue | None:
        """The newest value (by window end, then series name) visible at ``decision`` and not older
        than ``max_age`` from its start; None when there is none."""
        best: TableValue | None = None
        for _, s in self._series(fld, asset):
            v = next((v for v in reversed(s.values) if v.value is not None and v.end + lag <= decision), None)
            if v is not None and decision - v.time <= max_age and (best is None or (v.end, v.series) > (best.end, best.series)):
                best = v
        return best

    def complete(self, fld: str, asset: str | None, decision: int, lag: int) -> bool:
        """Every series of ``fld`` (of ``asset``, or all) has what could be visible at ``decision``."""
        for _, s in self._series(fld, asset):
            newest = s.values[-1]
            period = max(newest.end - newest.time, 1)
            if newest.end + period + lag <= decision:
                return False
        return True

    def prune(self, before: int) -> None:
        """Forget windows starting before ``before``, keeping each series' newest (readiness needs it)."""
        for by_series in self.fields.values():
            for s in by_series.values():
                cut = min(bisect.bisect_left(s.times, before), len(s.times) - 1)
                if cut > 0:
                    del s.times[:cut], s.values[:cut]

    def snapshot(self) -> dict:
        return {
            "fields": {f: {k: [[v.time, v.end, v.value] for v in s.values] for k, s in by.items()} for f, by in self.fields.items()},
            "assets": self.asset_of,
        }

    @classmethod
    def restore(cls, d: dict) -> AsOfTable:
        table = cls(asset_of=dict(d["assets"]))
        for f, by in d["fields"].items():
            for k, rows in by.items():
                table.fields.setdefault(f, {})[k] = _Series([r[0] for r in rows], [TableValue(k, r[0], r[1], r[2]) for r in rows])
        return table
