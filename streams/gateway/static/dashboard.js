// tickflow dashboard: history from /api/v1, live updates from /ws, health from /api/v1/health.
"use strict";
(() => {
  const LC = window.LightweightCharts;
  const $ = (id) => document.getElementById(id);
  const OVERLAYS = [["ma50", "#f0b90b"], ["ema12", "#4fc3f7"], ["bb_upper", "#7e57c2"], ["bb_lower", "#7e57c2"]];
  const state = { key: localStorage.getItem("tickflow.key") || "", ws: null, rooms: {}, series: [], current: null, retry: 500 };

  const chart = LC.createChart($("chart"), {
    autoSize: true,
    layout: { background: { color: "#101418" }, textColor: "#d8dee4" },
    grid: { vertLines: { color: "#1c232a" }, horzLines: { color: "#1c232a" } },
    timeScale: { timeVisible: true, secondsVisible: false },
  });
  const candles = chart.addSeries(LC.CandlestickSeries, { upColor: "#26a69a", downColor: "#ef5350", wickUpColor: "#26a69a", wickDownColor: "#ef5350", borderVisible: false });
  const volume = chart.addSeries(LC.HistogramSeries, { priceScaleId: "volume", priceFormat: { type: "volume" }, color: "#3d4b59" });
  chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  const lines = Object.fromEntries(OVERLAYS.map(([name, color]) => [name, chart.addSeries(LC.LineSeries, { color, lineWidth: 1, priceLineVisible: false, lastValueVisible: false })]));
  window.tickflowDashboard = { chart, candles, volume, lines, state };  // for tests and the console

  function say(text, kind = "error") {
    const el = $("status");
    el.textContent = text;
    el.className = kind === "info" ? "info" : "";
    el.hidden = !text;
  }

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: `Bearer ${state.key}` } });
    let body = null;
    try { body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text(); } catch (e) { body = null; }
    if (!r.ok) {
      const message = body?.error?.message || `HTTP ${r.status}`;
      const err = new Error(message);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  function authProblem(err) {
    if (err.status === 401) { say(`API key rejected: ${err.message}`); return true; }
    if (err.status === 403) { say(`API key not allowed: ${err.message}`); return true; }
    if (err.status === 429) { say(`Rate limited: ${err.message}`); return true; }
    return false;
  }

  const bar = (c) => ({ time: Math.floor(c.open_time / 1000), open: c.open, high: c.high, low: c.low, close: c.close });
  const vol = (c) => ({ time: Math.floor(c.open_time / 1000), value: c.volume, color: c.close >= c.open ? "#26a69a66" : "#ef535066" });

  function upsert(series, point) {
    const data = series.data();
    const last = data.length ? data[data.length - 1].time : -Infinity;
    if (point.time >= last) { series.update(point); return; }
    const i = data.findIndex((d) => d.time === point.time);  // a revision of an older window
    if (i >= 0) { const copy = data.slice(); copy[i] = point; series.setData(copy); }
  }

  function showCandle(c) {
    upsert(candles, bar(c));
    upsert(volume, vol(c));
    $("last-close").textContent = c.close.toPrecision(8).replace(/\.?0+$/, "");
    $("legend").textContent = `${c.exchange}:${c.symbol} ${c.interval}  O ${c.open}  H ${c.high}  L ${c.low}  C ${c.close}  V ${c.volume.toFixed(4)}${c.is_final ? "" : "  (forming)"}`;
  }

  function showIndicators(r) {
    const t = Math.floor(r.open_time / 1000);
    for (const [name] of OVERLAYS) if (r[name] != null) upsert(lines[name], { time: t, value: r[name] });
    if (r.rsi != null) $("last-rsi").textContent = r.rsi.toFixed(2);
  }

  async function load() {
    const s = state.current;
    if (!s) return;
    const q = `symbol=${encodeURIComponent(s.symbol)}&interval=${encodeURIComponent(s.interval)}&exchange=${encodeURIComponent(s.exchange)}&limit=1000`;
    candles.setData([]); volume.setData([]);
    for (const l of Object.values(lines)) l.setData([]);
    try {
      const rows = (await api(`/api/v1/candles?${q}`)).rows;
      candles.setData(rows.map(bar));
      volume.setData(rows.map(vol));
      if (rows.length) showCandle(rows[rows.length - 1]);
    } catch (err) {
      if (authProblem(err)) return;
      if (err.status !== 404) say(`candles: ${err.message}`);
    }
    try {
      const rows = (await api(`/api/v1/indicators?${q}`)).rows;
      for (const [name] of OVERLAYS) lines[name].setData(rows.filter((r) => r[name] != null).map((r) => ({ time: Math.floor(r.open_time / 1000), value: r[name] })));
      if (rows.length) showIndicators(rows[rows.length - 1]);
    } catch (err) { if (!authProblem(err) && err.status !== 404) say(`indicators: ${err.message}`, "info"); }
    chart.timeScale().fitContent();
    extras(s.symbol);
    subscribe();
  }

  async function extras(symbol) {
    const asset = symbol.replace(/[\/:_-]?(USDT|USDC|BUSD|USD|EUR|BTC)$/i, "") || symbol;
    for (const kind of ["onchain", "sentiment"]) {
      try {
        const rows = (await api(`/api/v1/${kind}?asset=${encodeURIComponent(asset)}&limit=5`)).rows;
        $(kind).textContent = rows.length ? rows.map((r) => Object.entries(r).filter(([k]) => !["asset", "exchange"].includes(k)).map(([k, v]) => `${k} ${v}`).join(" · ")).join("\n") : `no ${kind} values for ${asset}`;
      } catch (err) { $(kind).textContent = err.message; }
    }
  }

  function rooms() {
    const s = state.current;
    return s ? [`candles:${s.exchange}:${s.symbol}:${s.interval}`, `indicators:${s.exchange}:${s.symbol}:${s.interval}`] : [];
  }

  function send(doc) { if (state.ws?.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(doc)); }

  function subscribe() {
    for (const room of Object.keys(state.rooms)) if (!rooms().includes(room)) { send({ op: "unsubscribe", room }); delete state.rooms[room]; }
    for (const room of rooms()) {
      const known = state.rooms[room];
      send(known?.epoch ? { op: "subscribe", room, since: known.seq, epoch: known.epoch } : { op: "subscribe", room });
      state.rooms[room] = known || { seq: 0, epoch: null };
    }
  }

  function connect() {
    if (state.ws) { state.ws.onclose = null; state.ws.close(); }
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?token=${encodeURIComponent(state.key)}`);
    state.ws = ws;
    ws.onopen = () => { state.retry = 500; $("live").className = "badge on"; $("live").textContent = "live"; subscribe(); };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "message") {
        const r = state.rooms[m.room];
        if (!r) return;
        r.seq = m.seq;
        if (m.room.startsWith("candles:")) showCandle(m.data); else showIndicators(m.data);
      } else if (m.type === "subscribed") {
        const r = state.rooms[m.room];
        if (r && !m.already) { r.epoch = m.epoch; if (m.recovered === false) { r.seq = m.seq; load(); } else if (!m.recovered) r.seq = m.seq; }
      } else if (m.type === "error") {
        say(`${m.room ? m.room + ": " : ""}${m.message}`, "info");
      }
    };
    ws.onclose = (ev) => {
      $("live").className = "badge off"; $("live").textContent = "offline";
      if (ev.code === 4401) { say(`API key rejected: ${ev.reason || "wrong or revoked key"}`); return; }
      if (ev.code === 4403) { say(`API key not allowed to stream: ${ev.reason}`); return; }
      if (ev.code === 4008) say(`Disconnected as a slow consumer (${ev.reason}); reconnecting`, "info");
      state.retry = Math.min(state.retry * 2, 10000);
      setTimeout(connect, state.retry);
    };
  }

  async function health() {
    try {
      const h = await api("/api/v1/health");
      $("h-rate").textContent = h.input_trades_per_s == null ? "-" : `${Math.round(h.input_trades_per_s).toLocaleString()} trades/s`;
      const lag = Object.entries(h.sink_lag);
      $("h-lag").textContent = lag.length ? lag.map(([k, v]) => `${k} ${v}`).join(", ") : "-";
      $("h-dlq").textContent = h.dead_letters_total.toLocaleString();
      $("h-note").textContent = h.endpoints_reached.length ? "" : "pipeline metrics unreachable (is tickflow run up?)";
    } catch (err) { if (!authProblem(err)) $("h-note").textContent = err.message; }
  }

  function pick() {
    const [exchange, symbol] = $("series").value.split("\u0000");
    state.current = exchange === undefined || symbol === undefined ? null : { exchange, symbol, interval: $("interval").value };
    const url = new URL(location);
    if (state.current) { url.searchParams.set("exchange", exchange); url.searchParams.set("symbol", symbol); url.searchParams.set("interval", state.current.interval); history.replaceState(null, "", url); }
    load();
  }

  function fillIntervals() {
    const [exchange, symbol] = $("series").value.split("\u0000");
    const intervals = [...new Set(state.series.filter((s) => s.exchange === exchange && s.symbol === symbol).map((s) => s.interval))];
    const want = new URL(location).searchParams.get("interval") || $("interval").value;
    $("interval").replaceChildren(...intervals.map((i) => new Option(i, i, false, i === want)));
  }

  async function start() {
    say("");
    try {
      state.series = (await api("/api/v1/series")).series;
    } catch (err) {
      if (!authProblem(err)) say(`cannot list series: ${err.message}`);
      return;
    }
    if (!state.series.length) { say("No series yet: start the pipeline (tickflow run) and wait for the first candle.", "info"); }
    const params = new URL(location).searchParams;
    const pairs = [...new Map(state.series.map((s) => [`${s.exchange}\u0000${s.symbol}`, s])).values()];
    $("series").replaceChildren(...pairs.map((s) => new Option(`${s.exchange}:${s.symbol}`, `${s.exchange}\u0000${s.symbol}`, false, s.symbol === params.get("symbol") && (!params.get("exchange") || s.exchange === params.get("exchange")))));
    fillIntervals();
    connect();
    pick();
    health();
  }

  $("series").addEventListener("change", () => { fillIntervals(); pick(); });
  $("interval").addEventListener("change", pick);
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key").value.trim();
    localStorage.setItem("tickflow.key", state.key);
    start();
  });
  setInterval(() => { if (state.current) health(); }, 5000);
  $("key").value = state.key;
  if (state.key) start(); else say("Enter an API key (tickflow keys create --name dashboard) to connect.", "info");
})();
