-- TimescaleDB only (skipped on plain PostgreSQL): trades and candles as hypertables.
-- Requires TimescaleDB >= 2.13 (by_range). migrate_data moves rows already in the plain tables, so
-- converting a plain database (TIMESCALE=on) keeps its data; the migration run is one transaction.
-- Compression and retention are opt-in settings (TIMESCALE_COMPRESSION, TIMESCALE_TRADES_RETENTION),
-- applied after the migrations by sinks/timescale.py.

SELECT create_hypertable('trades', by_range('ts', INTERVAL '{{trades_chunk_interval}}'),
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('candles', by_range('open_time', INTERVAL '{{candles_chunk_interval}}'),
                         if_not_exists => TRUE, migrate_data => TRUE);
