-- Indicator values of final candles, keyed like candles. A revised candle re-emits its record and
-- those after it with a higher candle_revision only for the revised window; ReplacingMergeTree keeps
-- the highest candle_revision per window on merge (read with FINAL for exact results). NULL is
-- where TA-Lib has no value yet (its lookback). Re-runnable.
CREATE TABLE IF NOT EXISTS technical_metrics
(
    exchange LowCardinality(String),
    symbol LowCardinality(String),
    `interval` LowCardinality(String),
    open_time DateTime64(3, 'UTC'),
    close Float64,
    candle_revision UInt32,
    rsi Nullable(Float64),
    ma50 Nullable(Float64),
    ma200 Nullable(Float64),
    ema12 Nullable(Float64),
    ema26 Nullable(Float64),
    ema50 Nullable(Float64),
    ema200 Nullable(Float64),
    macd Nullable(Float64),
    macd_signal Nullable(Float64),
    macd_histogram Nullable(Float64),
    bb_upper Nullable(Float64),
    bb_middle Nullable(Float64),
    bb_lower Nullable(Float64),
    atr Nullable(Float64),
    stoch_k Nullable(Float64),
    stoch_d Nullable(Float64),
    obv Nullable(Float64),
    wma Nullable(Float64),
    adx Nullable(Float64),
    plus_di Nullable(Float64),
    minus_di Nullable(Float64),
    cci Nullable(Float64),
    willr Nullable(Float64),
    mfi Nullable(Float64),
    roc Nullable(Float64)
)
ENGINE = ReplacingMergeTree(candle_revision)
PARTITION BY toYYYYMM(open_time)
ORDER BY (exchange, symbol, `interval`, open_time);
