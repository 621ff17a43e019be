"""TimescaleDB mode: the decision over catalog facts (pure), the catalog reading through a fake of
its queries, the policy statements, and ``off``/``auto``/``on`` against the local PostgreSQL (which
has no TimescaleDB)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from sinks.migrations import TIMESCALE_PARAMS, discover, migrate_postgres, run_postgres_migrations
from sinks.timescale import CatalogFacts, TableFacts, TimescaleError, decide, hypertables_in, policy_statements, preload_instruction, read_facts
from tests.test_sinks_postgres import pg_url, rows  # noqa: F401  (fixture)

PLAIN_DB = {"0001": "postgres", "0002": "skipped", "0003": "postgres", "0004": "postgres", "0005": "postgres", "0006": "postgres", "0007": "postgres", "0008": "postgres", "0009": "postgres"}
TS_DB = {"0001": "postgres", "0002": "timescaledb", "0003": "timescaledb", "0004": "timescaledb", "0005": "timescaledb", "0006": "timescaledb", "0007": "timescaledb", "0008": "postgres", "0009": "timescaledb"}


def facts(**kw) -> CatalogFacts:  # noqa: ANN003
    base = dict(available_version="2.22.1", installed_version=None, preloaded=True, preload_setting="timescaledb", recorded={}, plain_tables=())
    return CatalogFacts(**{**base, **kw})


# -- the decision


def test_off_never_touches_the_extension() -> None:
    plan = decide("off", facts())
    assert (plan.timescale, plan.create_extension) == (False, False)
    assert decide("off", facts(recorded=TS_DB)).report.startswith("TIMESCALE=off: plain PostgreSQL (hypertables made earlier stay")


def test_auto_on_a_fresh_database_uses_a_preloaded_extension_and_says_so() -> None:
    plan = decide("auto", facts())
    assert (plan.timescale, plan.create_extension, plan.convert) == (True, True, ())
    assert "TimescaleDB 2.22.1" in plan.report and "preloads" in plan.report
    assert decide("auto", facts(installed_version="2.22.1")).create_extension is False


def test_auto_does_not_switch_on_an_extension_that_merely_can_be_created() -> None:
    plan = decide("auto", facts(preloaded=False, preload_setting="pg_stat_statements"))
    assert plan.timescale is False
    assert "shared_preload_libraries = 'pg_stat_statements,timescaledb'" in plan.report and "TIMESCALE=on" in plan.report
    assert decide("auto", facts(available_version=None)).report == "TIMESCALE=auto: plain PostgreSQL (no timescaledb extension on this server)"
    assert decide("auto", facts(available_version="2.11.0")).timescale is False  # too old: plain, with the reason


def test_auto_keeps_a_plain_database_plain_and_a_timescale_database_timescale() -> None:
    plain = decide("auto", facts(recorded=PLAIN_DB, plain_tables=(TableFacts("trades", "ts", 10),)))
    assert plain.timescale is False and "TIMESCALE=on converts it" in plain.report
    ts = decide("auto", facts(recorded=TS_DB, installed_version="2.22.1"))
    assert (ts.timescale, ts.create_extension) == (True, False)
    with pytest.raises(TimescaleError, match="migrated in TimescaleDB mode, but the timescaledb library is not preloaded"):
        decide("auto", facts(recorded=TS_DB, installed_version="2.22.1", preloaded=False, preload_setting=""))


def test_on_refuses_with_what_to_do() -> None:
    with pytest.raises(TimescaleError, match="no timescaledb extension: install TimescaleDB >= 2.13"):
        decide("on", facts(available_version=None))
    with pytest.raises(TimescaleError) as info:
        decide("on", facts(preloaded=False, preload_setting="pg_stat_statements"))
    assert "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements,timescaledb';" in str(info.value)
    assert "restart PostgreSQL" in str(info.value)
    with pytest.raises(TimescaleError, match="not readable by this role"):
        decide("on", facts(preloaded=False, preload_setting=None))
    with pytest.raises(TimescaleError, match="2.11.2 is older than 2.13: ALTER EXTENSION timescaledb UPDATE"):
        decide("on", facts(installed_version="2.11.2"))


def test_on_converts_a_plain_database_with_its_rows_or_refuses_whole() -> None:
    tables = (TableFacts("trades", "ts", 1200), TableFacts("candles", "open_time", 30))
    plan = decide("on", facts(recorded=PLAIN_DB, plain_tables=tables))
    assert plan.timescale and plan.convert == ("trades", "candles")
    assert "converting plain tables trades, candles to hypertables with their ~1,230 rows, in one transaction" in plan.report
    blocked = (TableFacts("trades", "ts", 5, unique_without_time=("trades_trade_id_key",)), TableFacts("candles", "open_time", 0, referenced_by=("fk_x on notes",)))
    with pytest.raises(TimescaleError) as info:
        decide("on", facts(recorded=PLAIN_DB, plain_tables=blocked))
    text = str(info.value)
    assert "nothing was changed" in text
    assert "unique index trades_trade_id_key lacks the time column ts" in text and "foreign key fk_x on notes references it" in text


def test_preload_instruction_keeps_other_libraries_once() -> None:
    assert "'timescaledb'" in preload_instruction("")
    assert "'pg_cron,timescaledb'" in preload_instruction("pg_cron, timescaledb")


# -- reading the catalog (a fake of its queries)


class FakeCatalog:
    def __init__(self, answers: dict[str, list[tuple]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, tuple]] = []

    def __call__(self, sql: str, params) -> list[tuple]:  # noqa: ANN001
        self.asked.append((sql, tuple(params)))
        for needle, rows_ in self.answers.items():
            if needle in sql:
                return rows_
        raise AssertionError(f"unexpected query {sql}")


def test_read_facts_from_the_catalog() -> None:
    fake = FakeCatalog(
        {
            "pg_available_extensions": [("2.22.1", "2.22.1")],
            "pg_settings": [("shared_preload_libraries", "timescaledb")],
            "timescaledb_information.hypertables": [("candles",)],
            "FROM pg_class": [(1500,)],
            "FROM pg_index": [("trades_uniq",)],
            "FROM pg_constraint": [],
        }
    )
    got = read_facts(fake, {"0001": "postgres"}, [("trades", "ts"), ("candles", "open_time")])
    assert got == CatalogFacts("2.22.1", "2.22.1", True, "timescaledb", {"0001": "postgres"}, (TableFacts("trades", "ts", 1500, ("trades_uniq",), ()),))
    assert not [sql for sql, params in fake.asked if "candles" in params]  # already a hypertable: not inspected


def test_read_facts_sees_the_loader_when_the_setting_is_hidden() -> None:
    fake = FakeCatalog({"pg_available_extensions": [("2.22.1", None)], "pg_settings": [("timescaledb.max_background_workers", "16")], "FROM pg_class": []})
    got = read_facts(fake, {}, [("trades", "ts")])
    assert (got.preloaded, got.preload_setting, got.plain_tables) == (True, None, ())
    bare = read_facts(FakeCatalog({"pg_available_extensions": [], "pg_settings": [], "FROM pg_class": []}), {}, [("trades", "ts")])
    assert (bare.available_version, bare.installed_version, bare.preloaded) == (None, None, False)


def test_the_timescale_files_declare_their_hypertables() -> None:
    sql = "\n".join(s for m in discover("postgres", timescale=True) if m.timescale for s in m.statements(TIMESCALE_PARAMS))
    assert hypertables_in(sql) == [("trades", "ts"), ("candles", "open_time"), ("technical_metrics", "open_time"), ("onchain_metrics", "day"), ("news_scored", "ts"), ("sentiment_aggregates", "window_start"), ("signals", "open_time"), ("trade_intents", "open_time"), ("onchain_block_metrics", "block_time")]
    assert not re.search(r"add_(compression|retention)_policy|timescaledb\.compress", sql)  # policies are opt-in settings
    assert "{{" not in sql
    (cagg,) = [s for m in discover("postgres", timescale=True) for s in m.statements(TIMESCALE_PARAMS) if "CREATE MATERIALIZED VIEW" in s]
    assert cagg.endswith("WITH NO DATA")  # WITH DATA would be illegal inside the migration transaction


# -- policies


def test_policies_are_off_by_default_and_follow_the_settings() -> None:
    hyper = {"trades", "candles", "technical_metrics"}
    off = policy_statements(hyper, set(), compression=False, retention=None)
    assert [sql.split("(")[0] for sql, _ in off] == ["SELECT remove_compression_policy"] * 3 + ["SELECT remove_retention_policy"]
    on = policy_statements(hyper, {"candles"}, compression=True, retention="90 days")
    alters = [sql for sql, _ in on if sql.startswith("ALTER TABLE")]
    assert [a.split()[2] for a in alters] == ["trades", "technical_metrics"]  # candles already has compression enabled
    assert "timescaledb.compress_segmentby = 'exchange, symbol'" in alters[0]
    assert ("SELECT add_compression_policy(%s::regclass, compress_after => %s::interval, if_not_exists => true)", ("trades", "7 days")) in on
    assert on[-2:] == [
        ("SELECT remove_retention_policy(%s::regclass, if_exists => true)", ("trades",)),
        ("SELECT add_retention_policy(%s::regclass, drop_after => %s::interval, if_not_exists => true)", ("trades", "90 days")),
    ]
    assert policy_statements(set(), set(), compression=True, retention="1 day") == []


# -- the local PostgreSQL, which has no TimescaleDB


@pytest.fixture
def no_timescale(pg_url: str) -> Iterator[str]:  # noqa: F811
    with psycopg.connect(pg_url) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone():
            pytest.skip("this server offers TimescaleDB")
    yield pg_url


def test_off_and_auto_migrate_plain_and_report_it(no_timescale: str) -> None:
    first = run_postgres_migrations(no_timescale, timescale="auto")
    assert first.applied == ["0001", "0003", "0004", "0005", "0006", "0007", "0008", "0009"] and first.policies == []
    assert first.report == "TIMESCALE=auto: plain PostgreSQL (no timescaledb extension on this server)"
    again = run_postgres_migrations(no_timescale, timescale="off")
    assert (again.applied, again.report) == ([], "TIMESCALE=off: plain PostgreSQL")
    assert rows(no_timescale, "SELECT version, variant FROM schema_migrations ORDER BY version") == sorted(PLAIN_DB.items())


def test_on_without_timescale_changes_nothing(no_timescale: str) -> None:
    with pytest.raises(TimescaleError, match="TIMESCALE=on, but this PostgreSQL server has no timescaledb extension"):
        migrate_postgres(no_timescale, timescale="on")
    assert rows(no_timescale, "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('trades', 'candles')") == [(0,)]


def test_a_failing_migration_leaves_the_database_as_it_was(no_timescale: str, tmp_path) -> None:  # noqa: ANN001
    folder = tmp_path / "postgres"
    folder.mkdir()
    (folder / "0001_a.sql").write_text("CREATE TABLE a (x int);")
    (folder / "0002_b.sql").write_text("CREATE TABLE b (x int); SELECT no_such_function();")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate_postgres(no_timescale, root=tmp_path)
    assert rows(no_timescale, "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('a', 'b')") == [(0,)]



def test_catalog_queries_against_the_local_server_find_what_blocks_a_conversion(no_timescale: str) -> None:
    migrate_postgres(no_timescale, timescale="off")
    candidates = [("trades", "ts"), ("candles", "open_time"), ("technical_metrics", "open_time"), ("absent", "ts")]
    with psycopg.connect(no_timescale, autocommit=True) as conn:
        query = lambda sql, params: conn.execute(sql, params or None).fetchall()  # noqa: E731
        clean = read_facts(query, {"0001": "postgres"}, candidates)
        assert (clean.available_version, clean.installed_version, clean.preloaded) == (None, None, False)
        assert [(t.name, t.unique_without_time, t.referenced_by) for t in clean.plain_tables] == [
            ("trades", (), ()),
            ("candles", (), ()),
            ("technical_metrics", (), ()),
        ]
        conn.execute("CREATE UNIQUE INDEX trades_by_id ON trades (exchange, symbol, trade_id)")
        conn.execute("CREATE TABLE notes (exchange text, symbol text, \"interval\" text, open_time timestamptz, "
                     "FOREIGN KEY (exchange, symbol, \"interval\", open_time) REFERENCES candles)")
        blocked = read_facts(query, {"0001": "postgres"}, candidates)
    trades, candles, _ = blocked.plain_tables
    assert trades.unique_without_time == ("trades_by_id",)
    assert candles.referenced_by == ("notes_exchange_symbol_interval_open_time_fkey on notes",)
    with pytest.raises(TimescaleError, match="unique index trades_by_id lacks the time column ts"):
        decide("on", CatalogFacts("2.22.1", None, True, "timescaledb", PLAIN_DB, blocked.plain_tables))
