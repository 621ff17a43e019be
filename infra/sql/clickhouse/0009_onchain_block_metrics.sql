-- On-chain figures per block (asset, height, hash), columns named like the OnchainBlockMetric
-- model's fields. A reorg retracts a replaced block with a higher revision (retracted = 1), and a
-- block back on the chain gets the next one; ReplacingMergeTree keeps the highest revision per key
-- on merge (read with FINAL, and WHERE NOT retracted for the chain as it stands). Re-runnable.
CREATE TABLE IF NOT EXISTS onchain_block_metrics
(
    asset LowCardinality(String),
    height Int64,
    hash String,
    block_time DateTime64(3, 'UTC'),
    revision UInt32,
    retracted Bool,
    tx_count Int64,
    fees_native Nullable(Float64),
    transfer_volume_native Float64,
    active_addresses Nullable(Int64),
    exchange_inflow_native Nullable(Float64),
    exchange_outflow_native Nullable(Float64),
    exchange_netflow_native Nullable(Float64)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYear(block_time)
ORDER BY (asset, height, hash);
