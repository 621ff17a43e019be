-- Example analytics over the tickflow ClickHouse tables (not a migration: only NNNN_*.sql files are).
-- ReplacingMergeTree removes duplicates and old revisions only when parts merge, so exact queries
-- either read FINAL or pick the latest revision themselves with argMax.

-- 1. Last day of 1-minute candles of one market, the newest revision of each window (FINAL).
SELECT open_time, open, high, low, close, volume, trade_count
FROM candles FINAL
WHERE exchange = 'binance' AND symbol = 'BTC/USDT' AND `interval` = '1m'
  AND open_time >= now64(3) - INTERVAL 1 DAY
ORDER BY open_time;

-- 2. The same without FINAL: argMax over the revision picks each window's latest version, then
--    hourly candles are rolled up from the 1-minute ones.
SELECT
    toStartOfHour(open_time) AS hour,
    argMin(open, open_time) AS open,
    max(high) AS high,
    min(low) AS low,
    argMax(close, open_time) AS close,
    sum(volume) AS volume
FROM
(
    SELECT
        open_time,
        argMax(open, revision) AS open,
        argMax(high, revision) AS high,
        argMax(low, revision) AS low,
        argMax(close, revision) AS close,
        argMax(volume, revision) AS volume
    FROM candles
    WHERE exchange = 'binance' AND symbol = 'BTC/USDT' AND `interval` = '1m'
    GROUP BY open_time
)
GROUP BY hour
ORDER BY hour;

-- 3. Hourly VWAP, volume and taker-buy share from the raw trade archive, each trade counted once.
SELECT
    toStartOfHour(ts) AS hour,
    sum(price * amount) / sum(amount) AS vwap,
    sum(amount) AS volume,
    sumIf(amount, side = 'buy') / sum(amount) AS taker_buy_share,
    count() AS trades
FROM trades FINAL
WHERE exchange = 'binance' AND symbol = 'BTC/USDT'
  AND ts >= now64(6) - INTERVAL 7 DAY
GROUP BY hour
ORDER BY hour;
