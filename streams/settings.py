"""All tickflow settings in one typed object, nested by concern, read from environment variables.

Defaults run embedded: no Kafka, ClickHouse or Schema Registry to install. Every field maps to an
upper-case environment variable of the same name (``KAFKA_BOOTSTRAP``, ``TICKS_PARTITIONS``, ...);
code reads it through its concern: ``settings.kafka.kafka_bootstrap``, ``settings.stores.database_url``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

CONFIG = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")


class KafkaSettings(BaseSettings):
    """The broker, topics and consumer groups."""

    model_config = CONFIG

    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; unset = embedded Tansu broker")
    broker_port: int = Field(9092, description="Port of the embedded broker")
    schema_registry_url: str | None = Field(None, description="Confluent Schema Registry; unset = fixed local schema ids")
    topic_ticks: str = "ticks"
    topic_candles: str = Field("candles", description="Final candles and their revisions")
    topic_candle_updates: str = Field("candles-live", description="In-progress candles, written with CANDLE_UPDATES=kafka or both")
    topic_indicators: str = "indicators"
    topic_dlq: str = "dlq"
    topic_late_trades: str = "late-trades"
    topic_candles_state: str = Field("candles-state", description="The candle agent's checkpoints (any agent: TOPIC_<AGENT>_STATE, default <agent>-state)")
    topic_indicators_state: str = "indicators-state"
    topic_signals: str = Field("signals", description="Signals of the strategy agent")
    topic_trade_intents: str = Field("trade_intents", description="Risk-sized trade intents of the risk agent")
    topic_risk_bars: str = Field("risk-bars", description="Signalled candles of a strategy's series, keyed by strategy, for the risk agent")
    topic_onchain_days: str = Field("onchain-days", description="Provider on-chain rows (coinmetrics: source), key asset")
    topic_onchain_blocks: str = Field("onchain-blocks", description="Blocks with resolved inputs (bitcoind: source), key asset")
    topic_onchain_metrics: str = Field("onchain_metrics", description="On-chain metrics per asset, day and source")
    topic_onchain_block_metrics: str = Field("onchain_block_metrics", description="On-chain figures per block, retracted by reorgs")
    topic_suffix: str = Field("", description="Appended to the default name of every topic without a setting of its own (isolated runs on a shared broker)")
    topic_news: str = Field("news", description="Scored headlines, RSS entries and posts (news_scored)")
    topic_sentiment: str = Field("sentiment", description="Sentiment aggregates per asset and window")
    topic_fear_greed: str = Field("fear-greed", description="The daily Crypto Fear & Greed index")
    ticks_partitions: int = Field(8, description="Partitions of ticks; derived topics use the same count")
    replication_factor: int = 1
    consumer_fetch_wait_ms: int = Field(
        10, description="Longest the broker holds a fetch without data on the realtime path (the candle agent, the Redis sink when it carries in-progress candles): latency floor of a quiet topic"
    )
    background_fetch_wait_ms: int = Field(
        250,
        description="The same for every other agent and the Redis sink otherwise: their records wait for windows to close anyway, "
        "and on Tansu, which holds each fetch this long, an idle consumer costs the broker a request per wait",
    )
    producer_linger_ms: int = Field(
        10,
        description="How long producers gather a partition's records into one request (librdkafka sends a request per partition): "
        "fewer requests for the broker, up to that much more latency per hop",
    )
    app_id: str = Field("tickflow", description="Prefix of every consumer group (agents: {app_id}-{agent}, sinks: {app_id}-sink-{name})")
    session_timeout_s: float = 8.0

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers, falling back to the embedded broker's address."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"


class StoreSettings(BaseSettings):
    """The stores and the sinks that write them."""

    model_config = CONFIG

    clickhouse_url: str | None = Field(None, description="ClickHouse server (http://user:pass@host:8123/db); unset = embedded chdb in TICKFLOW_DATA_DIR/clickhouse")
    database_url: str | None = Field("postgresql://127.0.0.1:5432/test", description="PostgreSQL/TimescaleDB for the postgres sink; empty = sink off")
    redis_url: str | None = Field("redis://127.0.0.1:6379/0", description="Redis for realtime fan-out; empty = sink off")
    timescale: Literal["auto", "on", "off"] = Field(
        "auto",
        description="TimescaleDB mode of DATABASE_URL: on = required (a plain database is converted), off = plain PostgreSQL, "
        "auto = TimescaleDB on a fresh database whose server preloads it, else the mode the database was migrated in",
    )
    timescale_compression: bool = Field(False, description="TimescaleDB mode: compress trades after 7 days, candles and indicators after 30")
    timescale_trades_retention: str = Field("", description="TimescaleDB mode: drop trade chunks older than this interval (e.g. '90 days'); empty = keep all")
    tickflow_data_dir: Path = Field(Path("./data"), description="Local state: embedded ClickHouse, snapshots")
    sink_batch_size: int = Field(5000, description="Records per sink write")
    sink_batch_ms: int = Field(500, description="Longest a sink holds a partial batch")
    redis_sink_batch_ms: int = Field(5, description="The same for the Redis sink: realtime fan-out, so its batches stay short")
    sink_retry_max_s: float = Field(5.0, description="Longest wait between two attempts of a sink to write to (or open) a store that is down")

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.tickflow_data_dir / 'clickhouse').resolve()}"


class SourceSettings(BaseSettings):
    """Sources and how ingest cuts their trades into records."""

    model_config = CONFIG

    ccxt_options: dict[str, Any] = Field(default_factory=dict, description='JSON merged into ccxt exchange options, e.g. {"defaultType": "future"}')
    ccxt_url_overrides: dict[str, Any] = Field(default_factory=dict, description="JSON deep-merged into ccxt exchange.urls (a proxy, a testnet, a local fake)")
    batch_max_trades: int = Field(500, description="Replay/synthetic micro-batch closes at this many trades ...")
    batch_max_ms: int = Field(50, description="... or this many ms of event time")
    unpaced_batch_max_ms: int = Field(1000, description="BATCH_MAX_MS of an unpaced replay or synthetic run, where nobody waits for a record")
    rss_poll_s: float = Field(60.0, description="Seconds between polls of an rss: feed")
    rss_state_path: Path | None = Field(None, description="Where rss: keeps seen links and ETags across restarts; unset = TICKFLOW_DATA_DIR/rss-state.json")
    fear_greed_api_url: str = Field("https://api.alternative.me/fng/", description="The Fear & Greed JSON API read by feargreed:api")
    fear_greed_poll_s: float = Field(3600.0, description="Seconds between polls of feargreed:api; 0 = read once and stop")
    bitcoind_rpc_user: str | None = Field(None, description="bitcoind JSON-RPC user (with BITCOIND_RPC_PASSWORD); unset = the cookie file")
    bitcoind_rpc_password: str | None = Field(None, description="bitcoind JSON-RPC password")
    bitcoind_cookie_file: Path | None = Field(None, description="bitcoind .cookie file; unset = ~/.bitcoin/.cookie when no user is set")
    bitcoind_start_height: int = Field(0, description="First block height the bitcoind: source reads when it has no saved position")
    bitcoind_poll_s: float = Field(5.0, description="How often the bitcoind: source asks for a new tip once caught up")
    bitcoind_confirmations: int = Field(0, description="Blocks this far below the tip are read; 0 = the tip itself (reorgs then revise days)")


class AgentSettings(BaseSettings):
    """The agents: candles, indicators, on-chain, sentiment, signals, and their checkpoints."""

    model_config = CONFIG

    sentiment_model_path: Path | None = Field(None, description="Sentiment model file; unset = the one shipped in agents/models")
    sentiment_assets: dict[str, list[str]] = Field(default_factory=dict, description='JSON added to the asset table: {"PEPE": ["pepe"]} (ticker -> names)')
    sentiment_lateness_ms: int = Field(300_000, description="Out-of-orderness allowed to news: watermark = newest item time - this")
    sentiment_grace_ms: int = Field(172_800_000, description="A final sentiment window is still revised by items up to this late")
    sentiment_idle_timeout_s: float = Field(10.0, description="Quiet time after which open sentiment windows close")
    candle_intervals: str = Field("1m,5m,15m,1h,4h,1d", description="Intervals built by the candle agent")
    candle_lateness_ms: int = Field(2000, description="Allowed out-of-orderness: watermark = max trade time - this")
    candle_grace_ms: int = Field(60_000, description="After a window is final, trades this late still revise it")
    candle_update_ms: int = Field(25, description="At most one in-progress update (all intervals of a symbol in one record) per symbol this often")
    candle_updates: Literal["redis", "kafka", "both"] = Field(
        "redis",
        description="Where in-progress candles go: redis = the worker PUBLISHes them itself (one broker hop sooner); "
        "kafka = the candles-live topic, which the Redis sink then reads; both = the worker publishes and writes the topic for other consumers",
    )
    candle_idle_timeout_s: float = Field(10.0, description="Wall-clock quiet time after which a partition's open windows close")
    candle_fill_gaps: bool = Field(True, description="Emit flat zero-volume candles for minutes with no trades")
    agent_checkpoint_s: float = Field(2.0, description="How often each agent checkpoints the partitions whose state moved")
    indicator_sma: str = Field("50,200", description="SMA periods feeding ma50 and ma200")
    indicator_ema: str = Field("12,26,50,200", description="EMA periods feeding ema12, ema26, ema50, ema200")
    indicator_rsi_period: int = Field(14, description="RSI period (Wilder smoothing)")
    indicator_macd: str = Field("12,26,9", description="MACD fast, slow, signal")
    indicator_bb_period: int = Field(20, description="Bollinger bands period")
    indicator_bb_dev: float = Field(2.0, description="Bollinger bands width in population standard deviations")
    indicator_atr_period: int = Field(14, description="ATR period (Wilder smoothing)")
    indicator_stoch: str = Field("14,3,3", description="Stochastic fast %K, slow %K, slow %D")
    indicator_history: int = Field(64, description="Recent candles per series a revision or late candle can still change")
    indicator_warm_start_bars: int = Field(1000, description="Stored candles seeding a new series (PostgreSQL, else a ClickHouse server); 0 = off")
    onchain_exchange_addresses: Path | None = Field(None, description="CSV of labelled addresses, `address,entity` per line, for exchange in/outflows; unset = flows null")
    onchain_keep_days: int = Field(2, description="Newest UTC days whose blocks the on-chain agent keeps one by one: how far back a reorg can revise a day")
    onchain_price_candles: str = Field(
        "", description="Daily candles whose close prices an asset for SOPR where no provider row has the day: EXCHANGE:SYMBOL=ASSET, comma-separated (binance:BTC/USDT=btc); empty = provider prices only"
    )
    strategy_file: Path | None = Field(None, description="TOML strategy of the signals agent (infra/strategies/*.toml); unset = no signals agent")
    signal_wait_s: float = Field(
        30.0,
        description="Longest wall-clock wait of a signal for on-chain/sentiment values not yet complete through its candle's close, "
        "and of the risk agent for a series behind the others; then they decide with what has arrived (tickflow_agent_waits_expired_total)",
    )
    drain_stall_s: float = Field(120.0, description="--until-drained fails when an agent makes no progress this long")

    @property
    def intervals(self) -> list[str]:
        return [i.strip() for i in self.candle_intervals.split(",") if i.strip()]

    @field_validator("onchain_price_candles")
    @classmethod
    def _price_candles(cls, value: str) -> str:
        from agents.onchain import read_price_candles

        read_price_candles(value)  # ValueError naming the item
        return value

    @field_validator("indicator_sma", "indicator_ema", "indicator_macd", "indicator_stoch")
    @classmethod
    def _periods(cls, value: str, info: ValidationInfo) -> str:
        want = {"indicator_sma": 2, "indicator_ema": 4, "indicator_macd": 3, "indicator_stoch": 3}[info.field_name]
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != want or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"{info.field_name.upper()} needs {want} comma-separated positive integers, got {value!r}")
        return value

    @staticmethod
    def periods(value: str) -> tuple[int, ...]:
        return tuple(int(p) for p in value.split(","))


class GatewaySettings(BaseSettings):
    """The gateway (`tickflow serve`)."""

    model_config = CONFIG

    gateway_enabled: bool = Field(True, description="tickflow run starts the gateway too (false: it does not)")
    gateway_host: str = Field("127.0.0.1", description="Address the gateway listens on")
    gateway_port: int = Field(8000, description="Gateway HTTP and WebSocket port; /metrics is served there too")
    gateway_store: Literal["auto", "postgres", "clickhouse"] = Field(
        "auto", description="Store the query API reads: auto = PostgreSQL when DATABASE_URL is set, else ClickHouse"
    )
    gateway_rate_limit: float = Field(50.0, description="Requests per second per API key (bursts of twice that); a key's own limit overrides it; 0 = unlimited")
    gateway_key_cache_s: float = Field(30.0, description="How long a checked key is remembered: a revoked key stops working within this time")
    gateway_cache: bool = Field(True, description="false: every query reads the store (benchmarks of the uncached path, debugging)")
    gateway_cache_size: int = Field(10_000, description="L1 query cache entries per process")
    gateway_cache_ttl_s: float = Field(60.0, description="L1 entry lifetime; closes and revisions invalidate sooner")
    gateway_l2_ttl_s: int = Field(300, description="L2 (Redis) entry lifetime; closes and revisions invalidate sooner")
    gateway_warm_top: int = Field(20, description="Hottest requests re-run at start and after their series closes a candle")
    gateway_ws_queue: int = Field(1000, description="Messages queued per WebSocket client; more and the client is closed as slow (4008)")
    gateway_ws_history: int = Field(1000, description="Messages kept per room for clients that reconnect with their last sequence")
    gateway_ws_max_rooms: int = Field(100, description="Rooms one WebSocket connection may join")
    gateway_ws_room_idle_s: float = Field(60.0, description="A room without clients keeps its subscription and history this long")
    gateway_heartbeat_s: float = Field(15.0, description="Heartbeat message period on every WebSocket")
    gateway_pipeline_metrics: str = Field("", description="Comma-separated /metrics URLs the dashboard's health panel reads; empty = METRICS_PORT and the next four ports on 127.0.0.1")


class OpsSettings(BaseSettings):
    """Logs and metrics."""

    model_config = CONFIG

    log_level: str = "INFO"
    log_format: str = Field("json", description="json or console")
    metrics_port: int | None = Field(
        None,
        description="Prometheus /metrics port; unset = the role's own (worker and run 9108, ingest 9109, sinks clickhouse 9110, "
        "postgres 9111, redis 9112, broker 9113); 0 = off",
    )


GROUPS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings,
    "stores": StoreSettings,
    "sources": SourceSettings,
    "agents": AgentSettings,
    "gateway": GatewaySettings,
    "ops": OpsSettings,
}
GROUP_OF: dict[str, str] = {field: group for group, cls in GROUPS.items() for field in cls.model_fields}


def _route(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Sort settings given by their environment names into their concerns; an unknown name is an error."""
    unknown = sorted(set(flat) - set(GROUP_OF))
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(unknown)}")
    routed: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        routed.setdefault(GROUP_OF[name], {})[name] = value
    return routed


class Settings(BaseModel):
    """Every setting, one concern per group; a part that needs one concern takes only its group.

    ``Settings(kafka_bootstrap=..., sink_batch_ms=...)`` takes overrides by their environment names
    (the rest still come from the environment), as does :meth:`updated`.
    """

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    stores: StoreSettings = Field(default_factory=StoreSettings)
    sources: SourceSettings = Field(default_factory=SourceSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not set(data) - set(GROUPS):
            return data
        nested = {k: v for k, v in data.items() if k in GROUPS}
        for group, values in _route({k: v for k, v in data.items() if k not in GROUPS}).items():
            nested[group] = GROUPS[group](**values)  # the group's other fields still come from the environment
        return nested

    def updated(self, **changes: Any) -> Settings:
        """A copy with some settings changed, named as in the environment (``updated(sink_batch_ms=200)``)."""
        groups = {group: getattr(self, group).model_copy(update=values) for group, values in _route(changes).items()}
        return self.model_copy(update=groups)


@lru_cache
def get_settings() -> Settings:
    return Settings()
