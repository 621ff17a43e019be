-- On-chain metrics per asset, UTC day and source (coinmetrics = provider data, bitcoind = blocks),
-- columns named like the OnchainMetric model's fields. A day is revised as data arrives (a later
-- provider row, the next block of the day, a reorg) with a higher revision; ReplacingMergeTree keeps
-- the highest revision per key on merge (read with FINAL). NULL = an input the metric needs is
-- missing. Re-runnable.
CREATE TABLE IF NOT EXISTS onchain_metrics
(
    asset LowCardinality(String),
    day DateTime64(3, 'UTC'),
    source LowCardinality(String),
    revision UInt32,
    price_usd Nullable(Float64),
    market_cap_usd Nullable(Float64),
    realized_cap_usd Nullable(Float64),
    mvrv Nullable(Float64),
    nupl Nullable(Float64),
    realized_price_usd Nullable(Float64),
    nvt Nullable(Float64),
    nvt_90d Nullable(Float64),
    volatility_30d Nullable(Float64),
    active_addresses Nullable(Float64),
    active_addresses_7d Nullable(Float64),
    active_addresses_30d Nullable(Float64),
    tx_count Nullable(Int64),
    fees_native Nullable(Float64),
    transfer_volume_native Nullable(Float64),
    sopr Nullable(Float64),
    sopr_coverage Nullable(Float64),
    exchange_inflow_native Nullable(Float64),
    exchange_outflow_native Nullable(Float64),
    exchange_netflow_native Nullable(Float64),
    exchange_flows Nullable(String),
    block_count Nullable(Int32),
    first_height Nullable(Int64),
    last_height Nullable(Int64)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYear(day)
ORDER BY (asset, day, source);
