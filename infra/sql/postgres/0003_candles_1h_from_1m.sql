-- Hourly candles rolled up from final 1-minute candles. Plain PostgreSQL gets a view; TimescaleDB
-- gets a real-time continuous aggregate of the same name, columns and results
-- (timescale/0003_candles_1h_from_1m.sql). date_bin on a UTC origin gives time_bucket's hour edges.

CREATE OR REPLACE VIEW candles_1h_from_1m AS
SELECT exchange,
       symbol,
       date_bin(INTERVAL '1 hour', open_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       (array_agg(open ORDER BY open_time))[1] AS open,
       max(high) AS high,
       min(low) AS low,
       (array_agg(close ORDER BY open_time DESC))[1] AS close,
       sum(volume) AS volume,
       sum(quote_volume) AS quote_volume,
       sum(trade_count) AS trade_count
FROM candles
WHERE "interval" = '1m'
GROUP BY exchange, symbol, bucket;
