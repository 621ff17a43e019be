-- TimescaleDB only (skipped on plain PostgreSQL): hypertables, compression and retention.
-- Requires TimescaleDB >= 2.13 (by_range). migrate_data moves rows already in the plain tables.

SELECT create_hypertable('trades', by_range('ts', INTERVAL '{{trades_chunk_interval}}'),
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('candles', by_range('open_time', INTERVAL '{{candles_chunk_interval}}'),
                         if_not_exists => TRUE, migrate_data => TRUE);

-- Segment by the market so per-symbol queries decompress only their segments; ordering covers the
-- rest of each primary key, which keeps uniqueness checks (ON CONFLICT) cheap on compressed chunks.
ALTER TABLE trades SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'exchange, symbol',
    timescaledb.compress_orderby = 'ts, trade_id'
);
ALTER TABLE candles SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'exchange, symbol, "interval"',
    timescaledb.compress_orderby = 'open_time'
);

SELECT add_compression_policy('trades', compress_after => INTERVAL '{{trades_compress_after}}', if_not_exists => TRUE);
SELECT add_compression_policy('candles', compress_after => INTERVAL '{{candles_compress_after}}', if_not_exists => TRUE);

-- Raw trades are re-derivable from the exchange and archived in ClickHouse; keep 90 days here.
SELECT add_retention_policy('trades', drop_after => INTERVAL '{{trades_retention}}', if_not_exists => TRUE);
