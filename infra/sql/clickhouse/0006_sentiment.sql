-- Sentiment: scored news/posts (news_scored), the daily Fear & Greed index (fear_greed) and the
-- per-asset window aggregates (sentiment_aggregates). An aggregate revised by a late item or a late
-- Fear & Greed value comes again with revision + 1; ReplacingMergeTree(revision) keeps the highest
-- per window on merge (read with FINAL). An item or a day written twice keeps one row. Re-runnable.
CREATE TABLE IF NOT EXISTS news_scored
(
    source LowCardinality(String),
    item_id String,
    ts DateTime64(3, 'UTC'),
    title String,
    label LowCardinality(String),
    score Float64,
    assets String,
    model LowCardinality(String),
    received_at DateTime64(6, 'UTC'),
    text Nullable(String),
    url Nullable(String),
    engagement Nullable(Float64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (source, item_id);

CREATE TABLE IF NOT EXISTS fear_greed
(
    day DateTime64(3, 'UTC'),
    value Int32,
    classification LowCardinality(String),
    source LowCardinality(String),
    received_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY day;

CREATE TABLE IF NOT EXISTS sentiment_aggregates
(
    asset LowCardinality(String),
    `interval` LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    items UInt64,
    mean_score Float64,
    positive_share Float64,
    negative_share Float64,
    neutral_share Float64,
    engagement Float64,
    weighted_score Nullable(Float64),
    fear_greed_value Nullable(Int32),
    fear_greed_class Nullable(String),
    is_final Bool,
    revision UInt32
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(window_start)
ORDER BY (asset, `interval`, window_start);
