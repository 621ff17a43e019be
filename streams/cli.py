"""The ``tickflow`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from streams.settings import PROJECT_ROOT, Settings, get_settings
from streams.statefile import StateFileError

app = typer.Typer(help="tickflow: crypto trades to candles, indicators and signals, event-sourced on Kafka.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


def _setup(settings: Settings, role: str, port: int | None = None, *, command: str | None = None) -> Settings:
    """Logging, and /metrics on the role's port (``--metrics-port``, else METRICS_PORT, else the
    role's default); a taken port ends the command with one line saying what to change.

    Returns the settings with the port chosen, which ``tickflow run`` hands to its sink processes.
    """
    from streams.observability import MetricsPortInUse, configure_logging, metrics_port, serve_metrics

    configure_logging(settings.ops.log_level, settings.ops.log_format)
    if port is not None:
        settings = settings.updated(metrics_port=port)
    try:
        url = serve_metrics(metrics_port(role, settings.ops.metrics_port), role=f"tickflow {command or role.replace('-', ' ')}")
    except MetricsPortInUse as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if url:
        console.print(f"metrics on {url}", highlight=False)
    return settings


def _sigterm_as_ctrl_c() -> None:
    """Until an asyncio loop handles the stop signals itself, SIGTERM unwinds like Ctrl-C, so an
    embedded broker and sink processes started so far are stopped rather than orphaned."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _check_strategy(settings: Settings) -> None:
    """A STRATEGY_FILE the signals agent could not load stops the command before anything starts."""
    if settings.agents.strategy_file is None:
        return
    from agents.strategy import StrategyError, load_strategy

    try:
        strategy_built(load_strategy(settings.agents.strategy_file), settings)
    except StrategyError as exc:
        console.print(f"[red]STRATEGY_FILE {exc}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def strategy_built(strategy, settings: Settings):  # noqa: ANN001, ANN201
    """The strategy, if the candle agent builds its interval (else no signal would ever come)."""
    from agents.strategy import StrategyError

    if strategy.interval not in settings.agents.intervals:
        raise StrategyError(f"interval {strategy.interval!r} of strategy {strategy.name!r} is not built: CANDLE_INTERVALS is {settings.agents.candle_intervals!r}")
    return strategy


def open_source(spec: str, settings: Settings, *, symbols: list[str], fmt: str | None, speed: str, rate: float | None, limit: int | None, exchange: str | None):
    """Build the source named by ``--source``: synthetic, replay:PATH, ccxt:EXCHANGE, coinmetrics:PATH or bitcoind:URL.

    For the on-chain sources ``--symbols`` names the asset (default: the Coin Metrics file's name; btc).
    """
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from streams.sources.synthetic import SyntheticSource

        max_ms = settings.sources.batch_max_ms if rate else settings.sources.unpaced_batch_max_ms
        return SyntheticSource(symbols=symbols or 10, rate=rate, limit=limit, exchange=exchange or "synthetic", max_trades=settings.sources.batch_max_trades, max_ms=max_ms)
    if kind == "replay" and fmt == "bitcoind-json":
        from streams.sources.bitcoind_replay import BitcoindReplaySource

        if not arg:
            raise typer.BadParameter("replay needs a path: --source replay:PATH --format bitcoind-json")
        try:
            return BitcoindReplaySource(arg, asset=(symbols[0] if symbols else "btc").lower())
        except FileNotFoundError as exc:
            raise typer.BadParameter(str(exc)) from None
    if kind == "replay":
        from streams.sources.replay import ReplaySource, parse_source_speed

        if not arg:
            raise typer.BadParameter("replay needs a path: --source replay:PATH")
        try:
            pace = parse_source_speed(speed)
            max_ms = settings.sources.batch_max_ms if pace else settings.sources.unpaced_batch_max_ms
            return ReplaySource(Path(arg), fmt=fmt, speed=pace, exchange=exchange, symbol=symbols[0] if symbols else None, max_trades=settings.sources.batch_max_trades, max_ms=max_ms)
        except ValueError as exc:  # unknown or undetectable format, unreadable file, bad names: the message says which
            raise typer.BadParameter(str(exc)) from None
    if kind == "ccxt":
        from streams.sources.ccxt_live import CcxtSource

        if not arg or not symbols:
            raise typer.BadParameter("ccxt needs an exchange and symbols: --source ccxt:binance --symbols BTC/USDT,ETH/USDT")
        try:
            return CcxtSource(arg, symbols, exchange_options=settings.sources.ccxt_options, url_overrides=settings.sources.ccxt_url_overrides)
        except ValueError as exc:  # unknown exchange, malformed symbols
            raise typer.BadParameter(str(exc)) from None
    if kind == "coinmetrics":
        from streams.sources.coinmetrics import CoinMetricsSource

        if not arg:
            raise typer.BadParameter("coinmetrics needs a path: --source coinmetrics:../shared/data/coinmetrics_onchain/btc.csv")
        try:
            return CoinMetricsSource(arg, asset=symbols[0] if symbols else None)
        except FileNotFoundError as exc:
            raise typer.BadParameter(str(exc)) from None
    if kind == "bitcoind":
        from streams.sources.bitcoind import BitcoindSource

        if not arg:
            raise typer.BadParameter("bitcoind needs the node's RPC URL: --source bitcoind:http://127.0.0.1:8332")
        return BitcoindSource(
            arg,
            state_dir=settings.stores.tickflow_data_dir / "bitcoind",
            asset=(symbols[0] if symbols else "btc").lower(),
            start_height=settings.sources.bitcoind_start_height,
            poll_s=settings.sources.bitcoind_poll_s,
            confirmations=settings.sources.bitcoind_confirmations,
            user=settings.sources.bitcoind_rpc_user,
            password=settings.sources.bitcoind_rpc_password,
            cookie_file=settings.sources.bitcoind_cookie_file,
        )
    if kind in ("news", "social", "rss", "feargreed"):
        return _sentiment_source(kind, arg, settings)
    raise typer.BadParameter(f"unknown source {spec!r}: use synthetic, replay:PATH, ccxt:EXCHANGE, coinmetrics:PATH, bitcoind:URL, news:PATH, social:PATH, rss:URL, feargreed:PATH or feargreed:api")


def _sentiment_source(kind: str, arg: str, settings: Settings):  # noqa: ANN202
    """news:PATH, social:PATH, rss:URL, feargreed:PATH and feargreed:api."""
    if not arg:
        raise typer.BadParameter(f"{kind} needs an argument: --source {kind}:{'URL' if kind == 'rss' else 'PATH'}")
    if kind == "feargreed":
        from streams.sources.feargreed import FearGreedApiSource, FearGreedFileSource

        return FearGreedApiSource(settings.sources.fear_greed_api_url, settings.sources.fear_greed_poll_s) if arg == "api" else FearGreedFileSource(arg)
    from agents.sentiment_model import settings_scorer

    scorer = settings_scorer(settings)
    if kind == "rss":
        from streams.sources.rss import RssSource

        return RssSource(arg, scorer, settings.sources.rss_state_path or settings.stores.tickflow_data_dir / "rss-state.json", settings.sources.rss_poll_s)
    from streams.sources.news import NewsSource
    from streams.sources.social import SocialSource

    return (NewsSource if kind == "news" else SocialSource)(arg, scorer)


def _symbols(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


SourceOpt = Annotated[str, typer.Option("--source", help="synthetic | replay:PATH | ccxt:EXCHANGE | coinmetrics:PATH | bitcoind:URL | news:PATH | social:PATH | rss:URL | feargreed:PATH | feargreed:api")]
SymbolsOpt = Annotated[Optional[str], typer.Option("--symbols", help="Comma-separated symbols (ccxt: BTC/USDT,ETH/USDT; synthetic: names)")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="Replay format; detected when omitted: binance-trades, binance-aggtrades, tardis, ccxt-json, binance-ws; bitcoind-json (recorded node RPC responses, a file, folder or glob)")]
SpeedOpt = Annotated[str, typer.Option("--speed", help="Replay speed: 1x, 10x, ... or max")]
RateOpt = Annotated[Optional[float], typer.Option("--rate", help="Synthetic trades per second (omit for as fast as possible)")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Synthetic: stop after this many trades")]
ExchangeOpt = Annotated[Optional[str], typer.Option("--exchange", help="Replay: exchange name when the file has none; synthetic: the exchange its trades name (default synthetic)")]
MetricsPortOpt = Annotated[
    Optional[int],
    typer.Option("--metrics-port", help="Prometheus /metrics port (default METRICS_PORT, else this command's own: see README); 0 = off", show_default=False),
]


@app.command()
def broker(
    port: Annotated[Optional[int], typer.Option(help="Port (default BROKER_PORT, 9092)")] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) on 127.0.0.1 until stopped (SIGTERM or Ctrl-C
    stop Tansu too). Its memory is the metric tickflow_embedded_broker_resident_bytes (port 9113).

    Example: tickflow broker --port 9092
    """
    import threading

    from streams.broker import EmbeddedBroker
    from streams.shutdown import stop_on_signals
    from streams.topics import ensure_topics, recreate_miscounted

    settings = _setup(get_settings(), "broker", metrics_port)
    stop = threading.Event()
    stop_on_signals(stop.set)
    b = EmbeddedBroker(port or settings.kafka.broker_port, log_file=settings.stores.tickflow_data_dir / "tansu.log")
    settings.stores.tickflow_data_dir.mkdir(parents=True, exist_ok=True)
    try:
        b.start()
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    try:
        local = settings.updated(kafka_bootstrap=b.bootstrap)
        ensure_topics(local)
        for _ in range(3):  # a client that reconnected at once may have made a topic with Tansu's default count
            if not recreate_miscounted(local):
                break
        console.print(f"broker on {b.bootstrap}: export KAFKA_BOOTSTRAP={b.bootstrap}; Ctrl-C or SIGTERM stops it", highlight=False, soft_wrap=True)
        while not stop.wait(0.5):
            if b.proc is None or b.proc.poll() is not None:
                console.print(f"[red]error:[/] tansu exited with code {b.proc.returncode if b.proc else '?'} (log: {b.log_file})", highlight=False)
                raise typer.Exit(1)
    finally:
        b.stop()


@app.command()
def ingest(
    source: SourceOpt = "synthetic",
    symbols: SymbolsOpt = None,
    fmt: FormatOpt = None,
    speed: SpeedOpt = "max",
    rate: RateOpt = 1000.0,
    limit: LimitOpt = None,
    exchange: ExchangeOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run a source into the ticks topic (KAFKA_BOOTSTRAP must point at a broker) until it ends or
    is stopped (SIGTERM, Ctrl-C); every trade read is then delivered before it exits.

    Example: tickflow ingest --source replay:trades.csv.gz --speed 10x
    Example: tickflow ingest --source feargreed:../shared/data/fear_greed/fear_greed_index_scofieldchen.csv
    """
    from streams.ingest import IngestStats, run_ingest
    from streams.producer import RecordProducer
    from streams.shutdown import STOP_SIGNALS
    from streams.topics import ensure_topics

    settings = _setup(get_settings(), "ingest", metrics_port)
    if not settings.kafka.kafka_bootstrap:
        raise typer.BadParameter("KAFKA_BOOTSTRAP is not set: start `tickflow broker` and export it, or use `tickflow run`")
    ensure_topics(settings)
    try:
        src = open_source(source, settings, symbols=_symbols(symbols), fmt=fmt, speed=speed, rate=rate, limit=limit, exchange=exchange)
    except StateFileError as exc:
        _state_file_failed(exc)

    seen: list[IngestStats] = []

    def progress(s: IngestStats) -> None:
        seen[:] = [s]
        records = f"  {s.records:,} records" if s.records else ""
        console.print(f"[bold]{s.trades:,}[/] trades  {s.rate:,.0f} trades/s  {s.batches:,} batches{records}  {s.rejected:,} errors", highlight=False)

    async def main() -> None:
        producer = RecordProducer(settings, component="ingest")
        task = asyncio.create_task(run_ingest(src, producer, settings, source_name=source.partition(":")[0], on_progress=progress))
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, task.cancel)  # run_ingest closes the source and flushes the producer
        try:
            await task
        except asyncio.CancelledError:  # run_ingest flushed the producer on its way out
            if seen:
                progress(seen[0])
            console.print("stopped: every trade read is delivered")
        finally:
            producer.close()

    try:
        asyncio.run(main())
    except StateFileError as exc:
        _state_file_failed(exc)


def _state_file_failed(exc: Exception) -> None:
    """A source could not save (or read) its position: stop, saying what the next start does."""
    console.print(
        f"[red]error:[/] {exc}\nstopped: every record read was delivered first; the next start resumes from the last saved position (records after it are delivered again)",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1) from None


def _summary(status) -> Group:  # noqa: ANN001
    t = Table(title="tickflow", expand=False)
    from agents.candle_agent import CANDLES_OUT
    from agents.indicator_agent import INDICATORS_OUT
    from streams.broker import RESIDENT

    candles, indicators = (sum(m.value for metric in c.collect() for m in metric.samples if m.name.endswith("_total")) for c in (CANDLES_OUT, INDICATORS_OUT))
    broker_bytes = RESIDENT.collect()[0].samples[0].value
    for col in ("trades", "trades/s", "errors", "candles", "indicators", "sink lag", *(("broker memory",) if broker_bytes else ())):
        t.add_column(col)
    s = status.ingest
    lags = status.sinks.lags() if status.sinks else {}
    t.add_row(
        f"{s.trades:,}" if s else "0",
        f"{s.rate:,.0f}" if s else "0",
        f"{s.rejected:,}" if s else "0",
        f"{candles:,.0f}",
        f"{indicators:,.0f}",
        ", ".join(f"{k} {v if v is not None else '?'}" for k, v in lags.items()) or "-",
        *((f"{broker_bytes / 1e6:,.0f} MB (embedded, in memory)",) if broker_bytes else ()),
    )
    candle_runner = next((r for r in status.runtime.runners if r.name == "candles"), None) if status.runtime else None
    if candle_runner is not None:
        latest = Table(show_header=True)
        for col in ("symbol", "interval", "open_time", "open", "high", "low", "close", "volume", "trades"):
            latest.add_column(col)
        rows = 0
        for ps in list(candle_runner.parts.values()):
            book = ps.logic.book
            for ex, sym in list(book._syms)[:8]:  # noqa: SLF001 - read-only view
                c = book.in_progress(ex, sym, candle_runner.settings.agents.intervals[0])
                if c is not None and rows < 12:
                    rows += 1
                    latest.add_row(f"{ex}:{sym}", c.interval, time.strftime("%H:%M", time.gmtime(c.open_time / 1000)), f"{c.open:g}", f"{c.high:g}", f"{c.low:g}", f"{c.close:g}", f"{c.volume:.4g}", str(c.trade_count))
        return Group(t, latest)
    return Group(t)


def _start_gateway(settings: Settings) -> subprocess.Popen[bytes] | None:
    """`tickflow serve` beside the pipeline (GATEWAY_ENABLED=false: not), logging to TICKFLOW_DATA_DIR/gateway.log.

    It reads PostgreSQL: embedded chdb is held by the ClickHouse sink's process, so without
    DATABASE_URL (and without a ClickHouse server) it is not started."""
    if not settings.gateway.gateway_enabled:
        return None
    if not settings.stores.database_url and not settings.stores.clickhouse_url:
        console.print("[yellow]gateway not started: it needs DATABASE_URL (keys, queries) or a ClickHouse server[/]")
        return None
    settings.stores.tickflow_data_dir.mkdir(parents=True, exist_ok=True)
    log_file = (settings.stores.tickflow_data_dir / "gateway.log").open("ab")
    from streams.broker import die_with_parent

    # SIGTERM from the kernel if `tickflow run` is killed outright: an orphan would keep port 8000.
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "serve"], stdout=log_file, stderr=log_file, env={**os.environ, "LOG_FORMAT": "json"},
        preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509 - one prctl call between fork and exec
    )
    url = f"http://{settings.gateway.gateway_host}:{settings.gateway.gateway_port}/"
    console.print(f"gateway on {url} (dashboard; API docs {url}docs; log {settings.stores.tickflow_data_dir / 'gateway.log'}); a key: tickflow keys create --name dashboard", highlight=False)
    return proc


@app.command()
def run(
    source: SourceOpt = "synthetic",
    symbols: SymbolsOpt = None,
    fmt: FormatOpt = None,
    speed: SpeedOpt = "max",
    rate: RateOpt = 1000.0,
    limit: LimitOpt = None,
    exchange: ExchangeOpt = None,
    until_drained: Annotated[bool, typer.Option("--until-drained", help="Exit 0 once the source is done and every sink has written everything")] = False,
    no_source: Annotated[bool, typer.Option("--no-source", help="Run worker and sinks only")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No live summary")] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the whole path: embedded broker if KAFKA_BOOTSTRAP is unset, a source, the candle worker, the sinks.

    Example: tickflow run --source replay:../shared/data/tardis_binance_futures_btcusdt/tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv --until-drained
    Example: tickflow run --source news:../shared/data/crypto_news/crypto_news_finbert_ds4a.csv --until-drained
    """
    from streams.pipeline import DrainStalled, RunStatus, SinkFailed, kafka, run_pipeline

    settings = _setup(get_settings(), "worker", metrics_port, command="run")  # the worker's port; its sinks at theirs
    _check_strategy(settings)
    _sigterm_as_ctrl_c()
    status = RunStatus()

    async def main(s: Settings) -> None:
        src = None if no_source else open_source(source, s, symbols=_symbols(symbols), fmt=fmt, speed=speed, rate=rate, limit=limit, exchange=exchange)
        task = asyncio.create_task(run_pipeline(s, source=src, source_name=source.partition(":")[0], until_drained=until_drained, say=lambda m: console.print(f"[yellow]{m}[/]"), status=status))
        if quiet or not sys.stderr.isatty():
            await task
            return
        with Live(_summary(status), console=console, refresh_per_second=2) as live:
            while not task.done():
                await asyncio.sleep(1.0)
                live.update(_summary(status))
        await task

    gateway = None if until_drained else _start_gateway(settings)
    try:
        with kafka(settings) as s:
            asyncio.run(main(s))
    except KeyboardInterrupt:
        console.print("stopped while starting")
        return
    except (DrainStalled, SinkFailed) as exc:
        console.print(f"[red]{'not drained' if isinstance(exc, DrainStalled) else 'sink failed'}:[/] {exc}")
        raise typer.Exit(1) from exc
    except StateFileError as exc:
        _state_file_failed(exc)
    finally:
        if gateway is not None:
            gateway.terminate()
            try:
                gateway.wait(10)
            except subprocess.TimeoutExpired:
                gateway.kill()
    if until_drained and status.ingest is not None:
        records = f", {status.ingest.records:,} other records (on-chain, news, Fear & Greed)" if status.ingest.records else ""
        console.print(f"drained: {status.ingest.trades:,} trades{records}, {status.ingest.rejected:,} rejected")


@app.command()
def worker(metrics_port: MetricsPortOpt = None) -> None:
    """Run the agents (candles, indicators, ...) alone; several workers share the partitions through
    each agent's consumer group. SIGTERM or Ctrl-C stop it cleanly, with every agent's state checkpointed.

    Example: KAFKA_BOOTSTRAP=kafka:9092 tickflow worker
    """
    from streams.pipeline import kafka, run_pipeline

    settings = _setup(get_settings(), "worker", metrics_port)
    _check_strategy(settings)
    _sigterm_as_ctrl_c()
    try:
        with kafka(settings) as s:
            asyncio.run(run_pipeline(s, source=None, source_name="-", until_drained=False, sinks_enabled=False))
    except KeyboardInterrupt:
        console.print("stopped while starting")


@app.command()
def sink(name: Annotated[str, typer.Argument(help="clickhouse | postgres | redis")], metrics_port: MetricsPortOpt = None) -> None:
    """Run one sink alone (its own consumer group). SIGTERM or Ctrl-C stop it once its batch is
    written and committed. The ClickHouse sink on embedded chdb answers `tickflow sql` for others.

    Example: KAFKA_BOOTSTRAP=kafka:9092 tickflow sink clickhouse
    """
    import threading

    from sinks.runner import SINKS, SinkRunner, StoppedWaiting, open_sinks, yield_cores
    from streams.producer import RecordProducer
    from streams.shutdown import stop_on_signals

    if name not in SINKS:
        raise typer.BadParameter(f"unknown sink {name!r}: use {', '.join(SINKS)}")
    settings = get_settings()
    if not settings.kafka.kafka_bootstrap:
        raise typer.BadParameter("KAFKA_BOOTSTRAP is not set")
    settings = _setup(settings, f"sink-{name}", metrics_port)
    stop = threading.Event()
    stop_on_signals(stop.set)
    yield_cores(name)
    try:
        chosen = open_sinks(settings, only=name, stop=stop)
    except StoppedWaiting:
        console.print("stopped while waiting for the store")
        return
    if not chosen:
        raise typer.BadParameter(f"sink {name!r} is not configured (clickhouse, postgres with DATABASE_URL, redis with REDIS_URL)")
    producer = RecordProducer(settings, component=f"sink-{name}")
    runner = SinkRunner(chosen[0], settings, dead_letter=producer.dead_letter_durably)
    try:
        runner.run(stop)
    finally:
        runner.close()
        chosen[0].close()
        producer.close()


@app.command()
def backfill(
    exchange: Annotated[str, typer.Option("--exchange", help="ccxt exchange id, e.g. binance")],
    symbols: Annotated[str, typer.Option("--symbols", help="Comma-separated ccxt symbols, e.g. BTC/USDT,ETH/USDT")],
    since: Annotated[str, typer.Option("--since", help="Start, UTC: 2024-01-01 or 2024-01-01T12:00")],
    interval: Annotated[str, typer.Option("--interval", help="Candle interval as the exchange names it: 1m, 1h, 1d, ...")] = "1d",
    until: Annotated[Optional[str], typer.Option("--until", help="End, UTC, exclusive; default now (closed windows only)")] = None,
) -> None:
    """Fetch closed exchange candles (ccxt fetch_ohlcv) into ClickHouse, PostgreSQL and the candles topic.

    Idempotent: a re-run leaves the stores as they are. Exits 1 if any symbol failed (the others are done).

    Example: tickflow backfill --exchange binance --symbols BTC/USDT,ETH/USDT --interval 1d --since 2024-01-01
    """
    from datetime import UTC, datetime

    from confluent_kafka import KafkaException
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from streams.backfill import BackfillError, parse_time, run_backfill
    from streams.observability import configure_logging

    settings = get_settings()
    configure_logging(settings.ops.log_level, settings.ops.log_format)
    try:
        since_ms = parse_time(since)
        until_ms = None if until is None else parse_time(until)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if until_ms is not None and until_ms <= since_ms:
        raise typer.BadParameter("--until must be after --since")
    wanted = list(dict.fromkeys(_symbols(symbols)))
    if not wanted:
        raise typer.BadParameter("--symbols needs at least one symbol, e.g. BTC/USDT")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bars: dict[str, TaskID] = {}

        def on_progress(symbol: str, done: int, total: int) -> None:
            if symbol not in bars:
                bars[symbol] = progress.add_task(f"{symbol} {interval}", total=total)
            progress.update(bars[symbol], completed=done, total=total)

        try:
            results = asyncio.run(run_backfill(settings, exchange, wanted, interval, since_ms, until_ms, on_progress))
        except (BackfillError, RuntimeError, TimeoutError, KafkaException) as exc:
            console.print(f"[red]backfill failed:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None

    def when(ms: int | None) -> str:
        return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")

    t = Table("symbol", "candles", "first open", "last open", "", title=f"backfill {exchange} {interval}")
    for r in results:
        t.add_row(r.symbol, f"{r.candles:,}", when(r.first_open), when(r.last_open), "[red]failed[/]" if r.error else "ok")
    console.print(t)
    failed = [r for r in results if r.error]
    for r in failed:
        console.print(f"[red]{r.symbol}:[/] {r.error}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply the versioned SQL migrations to ClickHouse and PostgreSQL/TimescaleDB, then check that
    every record type with a table has it, with a column per field (exit 1 naming what is missing).

    Prints the TimescaleDB mode (TIMESCALE=auto|on|off) and why; exits 1, changing nothing, when
    the mode cannot be had (the message says what to set).

    Example: DATABASE_URL=postgresql://localhost/tickflow tickflow migrate
    """
    from clickhouse_connect.driver.exceptions import ClickHouseError
    from rich.markup import escape

    from sinks.clickhouse import connect
    from sinks.migrations import SchemaMismatch, check_clickhouse, check_postgres, migrate_clickhouse, postgres_options, run_postgres_migrations
    from sinks.timescale import TimescaleError

    settings = get_settings()
    try:
        client = connect(settings.stores.clickhouse_dsn)
    except ClickHouseError as exc:
        held = " (another process has it open; a running ClickHouse sink migrated it when it started)" if settings.stores.clickhouse_dsn.startswith("chdb://") else ""
        console.print(f"[red]cannot open ClickHouse{held}:[/] {escape(str(exc).strip())}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    try:
        console.print(f"clickhouse: applied {migrate_clickhouse(client) or 'nothing new'}")
        check_clickhouse(client)
        if settings.stores.database_url:
            try:
                result = run_postgres_migrations(settings.stores.database_url, **postgres_options(settings))
            except TimescaleError as exc:
                console.print(f"[red]postgres: not migrated:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            console.print(f"postgres: {result.report}", highlight=False, soft_wrap=True)
            console.print(f"postgres: applied {result.applied or 'nothing new'}")
            for statement in result.policies:
                console.print(f"postgres: policy {statement}", highlight=False, soft_wrap=True)
            check_postgres(settings.stores.database_url)
    except SchemaMismatch as exc:
        console.print(f"[red]{exc}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    console.print("every registered table is in place")


@app.command()
def topics() -> None:
    """List topics with partitions and (low, high) offsets.

    Example: KAFKA_BOOTSTRAP=127.0.0.1:9092 tickflow topics
    """
    from streams.topics import end_offsets

    settings = get_settings()
    if not settings.kafka.kafka_bootstrap:
        raise typer.BadParameter("KAFKA_BOOTSTRAP is not set: start `tickflow broker` first")
    t = Table("topic", "partition", "low", "high", "records")
    for name, rows in end_offsets(settings).items():
        for p, lo, hi in rows:
            t.add_row(name, str(p), str(lo), str(hi), str(hi - lo))
    Console().print(t)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A ClickHouse SQL query")],
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Query the ClickHouse store, read-only: a server at CLICKHOUSE_URL, or the embedded chdb store,
    through the running ClickHouse sink when there is one (`make run`, `tickflow sink clickhouse`).

    Example: tickflow sql "SELECT interval, count() FROM candles FINAL GROUP BY interval"
    """
    import csv

    from rich.markup import escape

    from sinks.query import QueryError
    from sinks.query import query as run_query

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format must be table, csv or json, not {fmt!r}")
    try:
        result = run_query(get_settings(), query)
    except QueryError as exc:
        console.print(f"[red]query failed:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    cols, rows = result.column_names, result.rows
    if fmt == "json":
        for row in rows:
            print(json.dumps(dict(zip(cols, row, strict=True)), default=str))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    else:
        t = Table(*cols)
        for row in rows:
            t.add_row(*(str(v) for v in row))
        Console().print(t)


@app.command()
def subscribe(pattern: Annotated[str, typer.Argument(help="Redis channel pattern, e.g. 'candles:*'")] = "candles:*") -> None:
    """Print live messages from Redis pub/sub.

    Example: tickflow subscribe 'candles:binance-futures:BTCUSDT:1m'
    """
    import redis

    settings = get_settings()
    if not settings.stores.redis_url:
        raise typer.BadParameter("REDIS_URL is empty")
    pubsub = redis.Redis.from_url(settings.stores.redis_url).pubsub()
    pubsub.psubscribe(pattern)
    try:
        for msg in pubsub.listen():
            if msg["type"] == "pmessage":
                print(f"{msg['channel'].decode()} {msg['data'].decode()}", flush=True)
    except KeyboardInterrupt:
        pass


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option("--host", help="Listen address (default GATEWAY_HOST, 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port (default GATEWAY_PORT, 8000)")] = None,
) -> None:
    """Run the gateway: WebSocket rooms (/ws), the query API (/api/v1, docs at /docs), the dashboard (/) and /metrics.

    Reads PostgreSQL when DATABASE_URL is set (else ClickHouse), Redis for rooms, snapshots and the L2 cache.
    API keys: tickflow keys create --name NAME.

    Example: tickflow serve --host 0.0.0.0 --port 8000
    """
    from streams.gateway.server import serve as run_server
    from streams.observability import configure_logging

    settings = get_settings()
    configure_logging(settings.ops.log_level, settings.ops.log_format)
    h, p = host or settings.gateway.gateway_host, port or settings.gateway.gateway_port
    if settings.stores.database_url:
        from sinks.migrations import migrate_postgres

        migrate_postgres(settings.stores.database_url)  # api_keys and the tables it reads
    console.print(f"gateway on http://{h}:{p}/  (API docs http://{h}:{p}/docs, metrics http://{h}:{p}/metrics)", highlight=False)
    run_server(settings, h, p)


keys_app = typer.Typer(help="API keys of the gateway, stored in PostgreSQL as salted hashes.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _key_store():  # noqa: ANN202
    from sinks.migrations import migrate_postgres
    from streams.gateway.auth import KeyStore

    settings = get_settings()
    if not settings.stores.database_url:
        raise typer.BadParameter("DATABASE_URL is empty: keys live in PostgreSQL")
    migrate_postgres(settings.stores.database_url)
    return KeyStore(settings.stores.database_url)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Unique name of the key, e.g. dashboard")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: read (query API), stream (WebSocket)")] = "read,stream",
    rate_limit: Annotated[Optional[float], typer.Option("--rate-limit", help="Requests/s for this key (default GATEWAY_RATE_LIMIT; 0 = unlimited)")] = None,
) -> None:
    """Create an API key; only its salted hash is stored, so the key is shown once, alone on the last line.

    Example: tickflow keys create --name dashboard --scopes read,stream
    """
    from streams.gateway.auth import parse_scopes

    try:
        chosen = parse_scopes(scopes)
        key = _key_store().create(name, chosen, rate_limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"key {name!r} created with scopes {','.join(chosen)}; it is shown once:", highlight=False)
    print(key, flush=True)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (names, scopes, limits, dates; never the keys).

    Example: tickflow keys list
    """
    t = Table("name", "key id", "scopes", "rate limit", "created", "last used", "revoked")
    for k in _key_store().list():
        fmt = lambda d: d.strftime("%Y-%m-%d %H:%M") if d else "-"  # noqa: E731
        t.add_row(k["name"], k["key_id"], ",".join(k["scopes"]), "default" if k["rate_limit"] is None else f"{k['rate_limit']:g}/s", fmt(k["created_at"]), fmt(k["last_used_at"]), fmt(k["revoked_at"]))
    Console().print(t)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="Name of the key")]) -> None:
    """Revoke a key: refused by every gateway within GATEWAY_KEY_CACHE_S (30 s).

    Example: tickflow keys revoke dashboard
    """
    if not _key_store().revoke(name):
        console.print(f"[red]no active key named {name!r}[/]", highlight=False)
        raise typer.Exit(1)
    console.print(f"key {name!r} revoked", highlight=False)


@app.command()
def backtest(
    source: Annotated[str, typer.Option("--source", help="replay:PATH, a trade file in any replay format")],
    strategy: Annotated[Path, typer.Option("--strategy", help="TOML strategy file (see infra/strategies/)")] = Path("infra/strategies/trend_momentum.toml"),
    report: Annotated[Path, typer.Option("--report", help="Folder for trades.csv, equity.csv, metrics.json and report.html")] = Path("backtest-report"),
    fee_bps: Annotated[float, typer.Option("--fee-bps", min=0, max=1000, help="Fee per fill, basis points of notional")] = 4.0,
    slippage_bps: Annotated[float, typer.Option("--slippage-bps", min=0, max=1000, help="Slippage per market fill, basis points of price")] = 1.0,
    symbols: SymbolsOpt = None,
    fmt: FormatOpt = None,
    exchange: ExchangeOpt = None,
) -> None:
    """Run the live agents' logic over a replay and simulate the fills of its trade intents.

    The trades go through the same candle, indicator, signal and risk code as `tickflow run`, in
    the same order; fills are at the first trade after the signal candle's close plus slippage.

    Example: tickflow backtest --source replay:../shared/data/tardis_binance_futures_btcusdt/tardis_trades_binance-futures_BTCUSDT_2020-02-22.csv --strategy infra/strategies/trend_momentum.toml --report out/ --fee-bps 4 --slippage-bps 1
    """
    from agents.strategy import StrategyError, load_strategy
    from streams.backtest import run_backtest_source
    from streams.observability import configure_logging
    from streams.report import write_report

    settings = get_settings()
    configure_logging(settings.ops.log_level, settings.ops.log_format)
    try:
        strat = strategy_built(load_strategy(strategy), settings)
    except StrategyError as exc:
        console.print(f"[red]{exc}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if not source.startswith("replay:"):
        raise typer.BadParameter("backtest reads a recorded file: --source replay:PATH")
    try:
        src = open_source(source, settings, symbols=_symbols(symbols), fmt=fmt, speed="max", rate=None, limit=None, exchange=exchange)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    def progress(r) -> None:  # noqa: ANN001
        console.print(f"{r.trades_in:,} trades  {len(r.signals):,} signals  {len(r.intents):,} intents", highlight=False)

    result = run_backtest_source(src, strat, settings, fee_bps=fee_bps, slippage_bps=slippage_bps, source=source, on_progress=progress)
    paths = write_report(result, report)
    m = result.metrics()
    console.print(
        f"{result.trades_in:,} trades in {result.seconds:.2f} s ({result.trades_in / max(result.seconds, 1e-9):,.0f} trades/s): "
        f"{len(result.signals):,} signals, {len(result.intents):,} intents, {m['trades']} round trips, "
        f"return {100 * m['total_return']:.2f}%, max drawdown {100 * m['max_drawdown']:.2f}%",
        highlight=False,
    )
    for p in paths.values():
        console.print(f"  {p}", highlight=False)


sentiment_app = typer.Typer(help="Score text sentiment and rebuild the sentiment model.", no_args_is_help=True)
app.add_typer(sentiment_app, name="sentiment")


@sentiment_app.command("score")
def sentiment_score() -> None:
    """Score one text per stdin line; print CSV label,score,assets (assets ';'-separated, empty = market-wide), one line per input line, in order.

    Example: echo 'Bitcoin surges past $70K as ETF inflows jump' | tickflow sentiment score
    """
    import csv

    from agents.sentiment_model import settings_scorer

    scorer = settings_scorer(get_settings())
    out = csv.writer(sys.stdout, lineterminator="\n")
    for line in sys.stdin:
        s = scorer.score(line.rstrip("\r\n"))
        out.writerow((s.label, f"{s.score:.4f}", ";".join(s.assets)))


@sentiment_app.command("train")
def sentiment_train(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder holding crypto_news/ (the shared data)")] = PROJECT_ROOT.parent / "shared" / "data",
    out: Annotated[Optional[Path], typer.Option("--out", help="Model file to write (default: the shipped one, agents/models/sentiment.json.gz)")] = None,
    evaluate: Annotated[Optional[list[Path]], typer.Option("--eval", help="Labelled text the model never trains on (text@label lines or CSV text,label): macro-F1 printed")] = None,
    folds: Annotated[int, typer.Option("--folds", help="Cross-validation folds for the report; 0 = no report")] = 5,
) -> None:
    """Rebuild the sentiment model from the shared labelled headlines and report its macro-F1.

    Example: tickflow sentiment train --eval /tmp/Sentences_50Agree.txt
    """
    from agents.sentiment_model import MODEL_PATH, TRAIN_L2, default_lexicon, read_labelled, save_model, shared_examples, train_default, weighted
    from agents.sentiment_training import cross_dataset, cross_validate, evaluate as f1_on

    if not (data_dir / "crypto_news").is_dir():
        raise typer.BadParameter(f"{data_dir}/crypto_news not found: pass --data-dir")
    model = train_default(data_dir)
    size = save_model(model, out or MODEL_PATH)
    console.print(f"model {model.meta['id']}: {model.meta['vocabulary']:,} n-grams from {model.meta['examples']:,} texts, {size:,} bytes -> {out or MODEL_PATH}")
    lex = default_lexicon()
    for path in evaluate or []:
        examples = list(read_labelled(path))
        console.print(f"macro-F1 on {path} ({len(examples):,} texts, never trained on): {f1_on(model, lex, examples):.3f}")
    if folds:
        examples = weighted(shared_examples(data_dir))
        for name, f1 in cross_validate(examples, lex, folds=folds, l2=TRAIN_L2).items():
            console.print(f"{folds}-fold cross-validated macro-F1 on {name}: {f1:.3f}")
        for (train, test), f1 in cross_dataset(examples, lex, l2=TRAIN_L2).items():
            console.print(f"trained on {train} only, macro-F1 on {test}: {f1:.3f}")


def main() -> None:
    app()
