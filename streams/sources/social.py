"""``social:PATH``: posts (a tweets CSV or JSONL), scored, oldest first, weighted by engagement.

Like ``news:``, with the post text as title and its engagement (retweets + likes + replies, when
the file has them) kept for the engagement-weighted score of the aggregates.
"""

from __future__ import annotations

from collections.abc import Mapping

from streams.sources.news import TIME_COLUMNS, URL_COLUMNS, NewsSource, item_id, parse_time_ms, pick

TEXT = ("full_text", "text", "tweet", "content", "body", "title")
ENGAGEMENT = ("retweets", "retweet_count", "likes", "favorite_count", "like_count", "replies", "reply_count")


class SocialSource(NewsSource):
    kind = "social"

    def parse(self, row: Mapping[str, object]) -> tuple[int, str, str | None, str | None, str, float | None]:
        text = pick(row, TEXT)
        if not text:
            raise ValueError("no text")
        when = pick(row, TIME_COLUMNS)
        if when is None:
            raise ValueError("no time")
        ts = parse_time_ms(when)
        engagement = None
        for col in ENGAGEMENT:
            v = pick(row, (col,))
            if v is not None:
                try:
                    n = float(v)
                except ValueError:
                    raise ValueError(f"{col} {v!r} is not a number") from None
                if n < 0 or n != n:
                    raise ValueError(f"{col} {v!r} is negative or NaN")
                engagement = (engagement or 0.0) + n
        url = pick(row, URL_COLUMNS)
        return ts, " ".join(text.split()), None, url, item_id(row, url, text, ts), engagement
