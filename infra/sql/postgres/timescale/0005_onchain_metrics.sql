-- TimescaleDB variant of 0005: the same table as a hypertable on day (one row per asset, day and
-- source: small, so yearly chunks; revisions rewrite rows of any age). On a plain database being
-- converted the table exists already: migrate_data moves its rows.

CREATE TABLE IF NOT EXISTS onchain_metrics (
    asset text NOT NULL,
    day timestamptz NOT NULL,
    source text NOT NULL,
    revision integer NOT NULL,
    price_usd double precision,
    market_cap_usd double precision,
    realized_cap_usd double precision,
    mvrv double precision,
    nupl double precision,
    realized_price_usd double precision,
    nvt double precision,
    nvt_90d double precision,
    volatility_30d double precision,
    active_addresses double precision,
    active_addresses_7d double precision,
    active_addresses_30d double precision,
    tx_count bigint,
    fees_native double precision,
    transfer_volume_native double precision,
    sopr double precision,
    sopr_coverage double precision,
    exchange_inflow_native double precision,
    exchange_outflow_native double precision,
    exchange_netflow_native double precision,
    exchange_flows text,
    block_count integer,
    first_height bigint,
    last_height bigint,
    PRIMARY KEY (asset, day, source)
);

SELECT create_hypertable('onchain_metrics', by_range('day', INTERVAL '{{onchain_chunk_interval}}'),
                         if_not_exists => TRUE, migrate_data => TRUE);
