-- Trades and final candles. The same tables and keys serve plain PostgreSQL and TimescaleDB
-- (0002 turns them into hypertables), so queries give identical results on both. The time column
-- is part of each primary key because TimescaleDB requires it in every unique index.

CREATE TABLE IF NOT EXISTS trades (
    exchange text NOT NULL,
    symbol text NOT NULL,
    trade_id text NOT NULL,
    ts timestamptz NOT NULL,
    price double precision NOT NULL,
    amount double precision NOT NULL,
    side text NOT NULL,
    PRIMARY KEY (exchange, symbol, trade_id, ts)
);

-- Time-range scans of one market.
CREATE INDEX IF NOT EXISTS trades_market_ts ON trades (exchange, symbol, ts DESC);

-- Closed candles only; a later revision of a window replaces the stored one.
CREATE TABLE IF NOT EXISTS candles (
    exchange text NOT NULL,
    symbol text NOT NULL,
    "interval" text NOT NULL,
    open_time timestamptz NOT NULL,
    close_time timestamptz NOT NULL,
    open double precision NOT NULL,
    high double precision NOT NULL,
    low double precision NOT NULL,
    close double precision NOT NULL,
    volume double precision NOT NULL,
    quote_volume double precision NOT NULL,
    trade_count bigint NOT NULL,
    vwap double precision,
    taker_buy_volume double precision,
    first_trade_id text,
    last_trade_id text,
    is_final boolean NOT NULL,
    revision integer NOT NULL,
    PRIMARY KEY (exchange, symbol, "interval", open_time)
);
