"""The backtest's files: trades.csv, equity.csv, metrics.json and a self-contained report.html.

Everything is derived from the result alone (no wall clock, sorted keys), so two runs over the
same input write identical bytes. The HTML page draws its charts as inline SVG: no script, no
network, it opens anywhere.
"""

from __future__ import annotations

import csv
import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.execution import drawdowns
from streams.backtest import BacktestResult

_MAX_CANDLES = 600  # candles drawn; longer runs are merged into wider bars


def iso_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1e3, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _num(x: float) -> str:
    """Shortest exact form: rounding prices or quantities would break pnl = (exit - entry) x qty
    by more than a cent on a cheap coin held by the million."""
    return repr(float(x) + 0.0)


def _clean(value: Any) -> Any:
    """JSON-safe metrics: floats rounded to 10 digits, non-finite as null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 10) if math.isfinite(value) else None
    return value


def metrics_document(result: BacktestResult) -> dict[str, Any]:
    m = result.metrics()
    data = m["data"]
    for k in ("first_trade", "last_trade"):
        data[k] = iso_us(data[k]) if data[k] is not None else None
    return _clean(m)


def write_report(result: BacktestResult, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ex = result.executor
    assert ex is not None
    paths = {name: folder / name for name in ("trades.csv", "equity.csv", "metrics.json", "report.html")}
    with paths["trades.csv"].open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["symbol", "side", "entry_time", "entry_price", "exit_time", "exit_price", "quantity", "fee", "pnl", "reason"])
        for t in ex.trades:
            w.writerow([t.symbol, t.side, iso_us(t.entry_time), _num(t.entry_price), iso_us(t.exit_time), _num(t.exit_price),
                        _num(t.quantity), _num(t.fee), _num(t.pnl), t.reason])
    dds = drawdowns(ex.equity0, ex.equity)
    with paths["equity.csv"].open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["time", "equity", "drawdown"])
        for (t, e), dd in zip(ex.equity, dds, strict=True):
            w.writerow([iso_ms(t), _num(e), _num(dd)])
    doc = metrics_document(result)
    paths["metrics.json"].write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    paths["report.html"].write_text(render_html(result, doc, dds))
    return paths


# ------------------------------------------------------------------------------------ html

_W, _PAD = 1000, 72


def _scale(lo: float, hi: float, a: float, b: float):  # noqa: ANN202
    span = hi - lo or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axis(t0: int, t1: int, y_lo: float, y_hi: float, h: int, fmt: str) -> str:
    """Frame, four y labels and three time labels."""
    parts = [f'<rect x="{_PAD}" y="8" width="{_W - _PAD - 8}" height="{h - 36}" fill="none" stroke="#ccc"/>']
    y = _scale(y_lo, y_hi, h - 28, 8)
    for i in range(4):
        v = y_lo + (y_hi - y_lo) * i / 3
        v = 0.0 if abs(v) < 1e-9 * max(abs(y_lo), abs(y_hi), 1.0) else v  # no "-0.00"
        parts.append(f'<text x="{_PAD - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{format(v, fmt)}</text>')
    x = _scale(t0, t1, _PAD, _W - 8)
    for i in range(3):
        t = t0 + (t1 - t0) * i // 2
        anchor = ("start", "middle", "end")[i]
        parts.append(f'<text x="{x(t):.1f}" y="{h - 10}" text-anchor="{anchor}">{iso_ms(t)[:16].replace("T", " ")}</text>')
    return "".join(parts)


def _line_chart(points: list[tuple[int, float]], h: int, color: str, fmt: str, fill: bool = False) -> str:
    """A time series; ``fill`` shades between the line and zero (the drawdown)."""
    if not points:
        return "<p>No data.</p>"
    t0, t1 = points[0][0], max(points[-1][0], points[0][0] + 1)
    vals = [v for _, v in points]
    lo, hi = min(vals), max(vals)
    if fill:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    x = _scale(t0, t1, _PAD, _W - 8)
    y = _scale(lo, hi, h - 28, 8)
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for i, (t, v) in enumerate(points))
    shape = f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>'
    if fill:
        zero = y(0.0)
        shape = f'<path d="{path} L{x(points[-1][0]):.1f},{zero:.1f} L{x(t0):.1f},{zero:.1f} Z" fill="{color}" fill-opacity="0.25" stroke="{color}"/>'
    return f'<svg viewBox="0 0 {_W} {h}" width="100%" role="img">{_axis(t0, t1, lo, hi, h, fmt)}{shape}</svg>'


def _candle_chart(result: BacktestResult) -> str:
    candles = result.candles
    if not candles:
        return "<p>No candles of the strategy's interval.</p>"
    symbols = sorted({c.key for c in candles})
    key = symbols[0]
    series = [c for c in candles if c.key == key]
    step = max(1, math.ceil(len(series) / _MAX_CANDLES))
    bars = []
    for i in range(0, len(series), step):
        g = series[i : i + step]
        bars.append((g[0].open_time, g[-1].close_time, g[0].open, max(c.high for c in g), min(c.low for c in g), g[-1].close))
    t0, t1 = bars[0][0], bars[-1][1]
    lo, hi = min(b[4] for b in bars), max(b[3] for b in bars)
    h = 320
    x = _scale(t0, t1, _PAD, _W - 8)
    y = _scale(lo, hi, h - 28, 8)
    width = max(1.0, (_W - _PAD - 8) / len(bars) * 0.7)
    digits = max(2, 2 - math.floor(math.log10(hi - lo))) if hi > lo else 2  # cheap coins need more decimals
    parts = [_axis(t0, t1, lo, hi, h, f",.{digits}f")]
    for o_t, c_t, o, hh, ll, c in bars:
        cx = x((o_t + c_t) / 2)
        color = "#26a69a" if c >= o else "#ef5350"
        parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(hh):.1f}" y2="{y(ll):.1f}" stroke="{color}"/>')
        top, bottom = y(max(o, c)), y(min(o, c))
        parts.append(f'<rect x="{cx - width / 2:.1f}" y="{top:.1f}" width="{width:.1f}" height="{max(bottom - top, 0.8):.1f}" fill="{color}"/>')
    sym = key.rsplit(":", 1)[0]
    for t in result.trades:
        if t.symbol != sym:
            continue
        for when, price, kind in ((t.entry_time // 1000, t.entry_price, "entry"), (t.exit_time // 1000, t.exit_price, "exit")):
            if not t0 <= when <= t1:
                continue
            px, py = x(when), y(price)
            up = (kind == "entry") == (t.side == "long")
            pts = f"{px:.1f},{py:.1f} {px - 6:.1f},{py + (10 if up else -10):.1f} {px + 6:.1f},{py + (10 if up else -10):.1f}"
            color = "#1565c0" if kind == "entry" else "#6a1b9a"
            title = html.escape(f"{kind} {t.side} {t.quantity:g} @ {t.entry_price if kind == 'entry' else t.exit_price:,.2f} ({t.reason if kind == 'exit' else 'signal'})")
            parts.append(f'<polygon points="{pts}" fill="{color}"><title>{title}</title></polygon>')
    note = f" ({step} candles per bar)" if step > 1 else ""
    more = f"; other series: {', '.join(symbols[1:])}" if len(symbols) > 1 else ""
    return (f'<p class="note">{html.escape(key)}{note}{html.escape(more)}. Blue: entries, purple: exits (triangle up = buy).</p>'
            f'<svg viewBox="0 0 {_W} {h}" width="100%" role="img">{"".join(parts)}</svg>')


def _fmt_metric(name: str, v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if name in ("total_return", "cagr", "max_drawdown", "win_rate", "exposure"):
            return f"{100 * v:.2f}%"
        return f"{v:,.4f}"
    return html.escape(str(v))


def render_html(result: BacktestResult, doc: dict[str, Any], dds: list[float]) -> str:
    ex = result.executor
    assert ex is not None
    s = result.strategy
    rows = []
    for k, v in doc.items():
        if isinstance(v, dict):
            v = ", ".join(f"{kk}: {vv}" for kk, vv in v.items())
            rows.append(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>")
        else:
            rows.append(f"<tr><th>{html.escape(k)}</th><td>{_fmt_metric(k, v)}</td></tr>")
    trade_rows = "".join(
        f"<tr><td>{html.escape(t.symbol)}</td><td>{t.side}</td><td>{iso_us(t.entry_time)}</td><td>{t.entry_price:,.2f}</td>"
        f"<td>{iso_us(t.exit_time)}</td><td>{t.exit_price:,.2f}</td><td>{t.quantity:g}</td><td>{t.fee:,.2f}</td>"
        f"<td class=\"{'pos' if t.pnl >= 0 else 'neg'}\">{t.pnl:,.2f}</td><td>{html.escape(t.reason)}</td></tr>"
        for t in ex.trades[:500]
    )
    more = f"<p class=\"note\">First 500 of {len(ex.trades)} trades; all are in trades.csv.</p>" if len(ex.trades) > 500 else ""
    equity_pts = [(ex.equity[0][0], ex.equity0)] + ex.equity if ex.equity else []
    dd_pts = [(t, -d * 100) for (t, _), d in zip(ex.equity, dds, strict=True)]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Backtest {html.escape(s.name)} {html.escape(s.version)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1040px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
svg text {{ font-size: 11px; fill: #555; }}
table {{ border-collapse: collapse; font-size: 13px; }} th, td {{ padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; }}
td.pos {{ color: #1b5e20; }} td.neg {{ color: #b71c1c; }} .note {{ color: #666; font-size: 12px; }}
</style></head><body>
<h1>Backtest: {html.escape(s.name)} {html.escape(s.version)} ({html.escape(s.interval)})</h1>
<p>{html.escape(s.description)}</p>
<p class="note">Source {html.escape(result.source)}; fees {result.fee_bps:g} bps, slippage {result.slippage_bps:g} bps per fill.
Fills at the first trade after the signal candle's close; brackets on every trade.</p>
<h2>Equity</h2>{_line_chart(equity_pts, 240, "#1565c0", ",.2f")}
<h2>Drawdown (%)</h2>{_line_chart(dd_pts, 160, "#c62828", ".2f", fill=True)}
<h2>Candles, entries and exits</h2>{_candle_chart(result)}
<h2>Metrics</h2><table>{"".join(rows)}</table>
<h2>Trades</h2><table><tr><th>symbol</th><th>side</th><th>entry</th><th>price</th><th>exit</th><th>price</th><th>qty</th><th>fee</th><th>pnl</th><th>reason</th></tr>{trade_rows}</table>{more}
</body></html>
"""
