-- On-chain figures per block, one row per (asset, height, hash) holding its highest revision
-- (retracted once a reorg replaced the block); columns named like the OnchainBlockMetric model's
-- fields. The key holds block_time too, as a TimescaleDB hypertable needs (a hash has one time).
-- The TimescaleDB variant (timescale/0009_onchain_block_metrics.sql) makes it a hypertable.

CREATE TABLE IF NOT EXISTS onchain_block_metrics (
    asset text NOT NULL,
    height bigint NOT NULL,
    hash text NOT NULL,
    block_time timestamptz NOT NULL,
    revision integer NOT NULL,
    retracted boolean NOT NULL,
    tx_count bigint NOT NULL,
    fees_native double precision,
    transfer_volume_native double precision NOT NULL,
    active_addresses bigint,
    exchange_inflow_native double precision,
    exchange_outflow_native double precision,
    exchange_netflow_native double precision,
    PRIMARY KEY (asset, height, hash, block_time)
);
