-- Hourly candles rolled up from final 1-minute candles as a continuous aggregate. Real-time
-- (materialized_only = false): buckets not yet materialized are computed from the hypertable at
-- query time, so results match the plain-PostgreSQL view. WITH NO DATA keeps the statement legal
-- inside the migration's transaction; the policy does the first refresh. A NULL start_offset
-- lets the policy materialize replays of old data too (refreshes only touch invalidated buckets).

-- A database converted from plain PostgreSQL has the plain view of 0003 under this name.
DROP VIEW IF EXISTS candles_1h_from_1m;

CREATE MATERIALIZED VIEW IF NOT EXISTS candles_1h_from_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT exchange,
       symbol,
       time_bucket(INTERVAL '1 hour', open_time) AS bucket,
       first(open, open_time) AS open,
       max(high) AS high,
       min(low) AS low,
       last(close, open_time) AS close,
       sum(volume) AS volume,
       sum(quote_volume) AS quote_volume,
       sum(trade_count) AS trade_count
FROM candles
WHERE "interval" = '1m'
GROUP BY exchange, symbol, bucket
WITH NO DATA;

SELECT add_continuous_aggregate_policy('candles_1h_from_1m',
                                       start_offset => NULL,
                                       end_offset => INTERVAL '1 hour',
                                       schedule_interval => INTERVAL '{{cagg_refresh_every}}',
                                       if_not_exists => TRUE);
