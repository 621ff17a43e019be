-- Sentiment: scored news/posts, the daily Fear & Greed index and the per-asset window aggregates
-- (a revision replaces its window's row when higher). The TimescaleDB variant
-- (timescale/0006_sentiment.sql) makes news_scored and sentiment_aggregates hypertables; queries
-- give identical results on both.

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
    PRIMARY KEY (source, item_id, ts)  -- an item keeps its time; the same key as the TimescaleDB variant
);

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
