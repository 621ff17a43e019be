-- TimescaleDB variant of 0004: the same table as a hypertable chunked like candles. On a plain
-- database being converted the table exists already: migrate_data moves its rows.

CREATE TABLE IF NOT EXISTS technical_metrics (
    exchange text NOT NULL,
    symbol text NOT NULL,
    "interval" text NOT NULL,
    open_time timestamptz NOT NULL,
    close double precision NOT NULL,
    candle_revision integer NOT NULL,
    rsi double precision,
    ma50 double precision,
    ma200 double precision,
    ema12 double precision,
    ema26 double precision,
    ema50 double precision,
    ema200 double precision,
    macd double precision,
    macd_signal double precision,
    macd_histogram double precision,
    bb_upper double precision,
    bb_middle double precision,
    bb_lower double precision,
    atr double precision,
    stoch_k double precision,
    stoch_d double precision,
    obv double precision,
    wma double precision,
    adx double precision,
    plus_di double precision,
    minus_di double precision,
    cci double precision,
    willr double precision,
    mfi double precision,
    roc double precision,
    PRIMARY KEY (exchange, symbol, "interval", open_time)
);

SELECT create_hypertable('technical_metrics', by_range('open_time', INTERVAL '{{candles_chunk_interval}}'),
                         if_not_exists => TRUE, migrate_data => TRUE);
