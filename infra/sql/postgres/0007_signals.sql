-- Signals and trade intents of the strategy agent (records "signal" and "trade_intent" in
-- schemas/registry.py): the analysis history. The TimescaleDB variant (timescale/0007_signals.sql)
-- makes both hypertables; queries give the same results on both.

CREATE TABLE IF NOT EXISTS signals (
    strategy text NOT NULL,
    strategy_version text NOT NULL,
    exchange text NOT NULL,
    symbol text NOT NULL,
    "interval" text NOT NULL,
    open_time timestamptz NOT NULL,
    close_time timestamptz NOT NULL,
    close double precision NOT NULL,
    direction text NOT NULL CHECK (direction IN ('long', 'short', 'flat')),
    confidence double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    score double precision NOT NULL,
    reasons text NOT NULL,
    candle_revision integer NOT NULL,
    indicators_time timestamptz,
    prev_indicators_time timestamptz,
    onchain_time timestamptz,
    sentiment_time timestamptz,
    PRIMARY KEY (strategy, exchange, symbol, "interval", open_time)
);

CREATE TABLE IF NOT EXISTS trade_intents (
    intent_id text NOT NULL,
    strategy text NOT NULL,
    strategy_version text NOT NULL,
    exchange text NOT NULL,
    symbol text NOT NULL,
    "interval" text NOT NULL,
    open_time timestamptz NOT NULL,
    ts timestamptz NOT NULL,
    seq integer NOT NULL,
    action text NOT NULL,
    side text NOT NULL,
    position text NOT NULL,
    trigger text NOT NULL,
    status text NOT NULL CHECK (status IN ('accepted', 'resized', 'rejected')),
    quantity double precision NOT NULL,
    requested_quantity double precision NOT NULL,
    reference_price double precision NOT NULL,
    stop_price double precision,
    take_profit_price double precision,
    equity double precision NOT NULL,
    confidence double precision NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (strategy, exchange, symbol, "interval", open_time, seq)
);

CREATE INDEX IF NOT EXISTS trade_intents_ts ON trade_intents (ts);
