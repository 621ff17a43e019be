-- Signals and trade intents of the strategy agent (records "signal" and "trade_intent" in
-- schemas/registry.py): the analysis history. One signal per (strategy, series, candle); one
-- intent per (strategy, series, candle, seq). A replay writes the same rows again, which
-- ReplacingMergeTree folds on merge (read with FINAL). Re-runnable.
CREATE TABLE IF NOT EXISTS signals
(
    strategy LowCardinality(String),
    strategy_version LowCardinality(String),
    exchange LowCardinality(String),
    symbol LowCardinality(String),
    `interval` LowCardinality(String),
    open_time DateTime64(3, 'UTC'),
    close_time DateTime64(3, 'UTC'),
    close Float64,
    direction LowCardinality(String),
    confidence Float64,
    score Float64,
    reasons String,
    candle_revision UInt32,
    indicators_time Nullable(DateTime64(3, 'UTC')),
    prev_indicators_time Nullable(DateTime64(3, 'UTC')),
    onchain_time Nullable(DateTime64(3, 'UTC')),
    sentiment_time Nullable(DateTime64(3, 'UTC'))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(open_time)
ORDER BY (strategy, exchange, symbol, `interval`, open_time);

CREATE TABLE IF NOT EXISTS trade_intents
(
    intent_id String,
    strategy LowCardinality(String),
    strategy_version LowCardinality(String),
    exchange LowCardinality(String),
    symbol LowCardinality(String),
    `interval` LowCardinality(String),
    open_time DateTime64(3, 'UTC'),
    ts DateTime64(3, 'UTC'),
    seq UInt32,
    action LowCardinality(String),
    side LowCardinality(String),
    position LowCardinality(String),
    trigger LowCardinality(String),
    status LowCardinality(String),
    quantity Float64,
    requested_quantity Float64,
    reference_price Float64,
    stop_price Nullable(Float64),
    take_profit_price Nullable(Float64),
    equity Float64,
    confidence Float64,
    reason String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (strategy, exchange, symbol, `interval`, open_time, seq);
