-- Raw trade archive and final candles. Both tables are ReplacingMergeTree, so records delivered
-- twice (replays, redelivery after a crash) collapse to one row per key when parts merge; read
-- with FINAL (or argMax) for exact results before merges catch up. Every statement is re-runnable.

-- One row per exchange trade. The key is the exchange's trade id; a minmax index on ts lets time
-- ranges skip granules, and monthly partitions let old months be dropped or moved as a whole.
CREATE TABLE IF NOT EXISTS trades
(
    exchange LowCardinality(String),
    symbol LowCardinality(String),
    trade_id String,
    ts DateTime64(6, 'UTC'),
    price Float64,
    amount Float64,
    side LowCardinality(String),
    INDEX ts_minmax ts TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (exchange, symbol, trade_id);

-- Closed candles only (is_final = 1); the highest revision of a window wins on merge.
CREATE TABLE IF NOT EXISTS candles
(
    exchange LowCardinality(String),
    symbol LowCardinality(String),
    `interval` LowCardinality(String),
    open_time DateTime64(3, 'UTC'),
    close_time DateTime64(3, 'UTC'),
    open Float64,
    high Float64,
    low Float64,
    close Float64,
    volume Float64,
    quote_volume Float64,
    trade_count Int64,
    vwap Nullable(Float64),
    taker_buy_volume Nullable(Float64),
    first_trade_id Nullable(String),
    last_trade_id Nullable(String),
    is_final Bool,
    revision UInt32
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(open_time)
ORDER BY (exchange, symbol, `interval`, open_time);
