-- TimescaleDB variant of 0009: the same table as a hypertable on block_time (about 52,000 blocks a
-- year for bitcoin: yearly chunks). On a plain database being converted the table exists already:
-- migrate_data moves its rows.

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

SELECT create_hypertable('onchain_block_metrics', by_range('block_time', INTERVAL '{{onchain_chunk_interval}}'),
                         if_not_exists => TRUE, migrate_data => TRUE);
