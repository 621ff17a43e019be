-- TimescaleDB variant of 0006: news_scored and sentiment_aggregates as hypertables (a hypertable's
-- unique keys must hold its time column, so news_scored's key gains ts; an item keeps its time).

CREATE TABLE IF NOT EXISTS news_scored (
    source text NOT NULL,
    item_id text NOT NULL,
    ts timestamptz NOT NULL,
    title text NOT NULL,
    label text NOT NULL,
    score double precision NOT NULL,
    assets text NOT NULL,
    model text NOT NULL,
    received_at timestamptz NOT NULL,
    text text,
    url text,
    engagement double precision,
    PRIMARY KEY (source, item_id, ts)
);

SELECT create_hypertable('news_scored', by_range('ts', INTERVAL '30 days'), if_not_exists => TRUE, migrate_data => TRUE);

CREATE TABLE IF NOT EXISTS fear_greed (
    day timestamptz PRIMARY KEY,
    value integer NOT NULL,
    classification text NOT NULL,
    source text NOT NULL,
    received_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS sentiment_aggregates (
    asset text NOT NULL,
    "interval" text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    items bigint NOT NULL,
    mean_score double precision NOT NULL,
    positive_share double precision NOT NULL,
    negative_share double precision NOT NULL,
    neutral_share double precision NOT NULL,
    engagement double precision NOT NULL,
    weighted_score double precision,
    fear_greed_value integer,
    fear_greed_class text,
    is_final boolean NOT NULL,
    revision integer NOT NULL,
    PRIMARY KEY (asset, "interval", window_start)
);

SELECT create_hypertable('sentiment_aggregates', by_range('window_start', INTERVAL '90 days'), if_not_exists => TRUE, migrate_data => TRUE);
