"""ClickHouse cluster: in a Replicated database the migrations create Replicated tables."""

from __future__ import annotations

import re

from sinks.migrations import discover, replicated_engines


def test_clickhouse_tables_become_replicated_in_a_replicated_database() -> None:
    stmts = [s for m in discover("clickhouse") for s in m.statements(backslash_escapes=True)]
    converted = [replicated_engines(s) for s in stmts]
    engines = re.findall(r"ENGINE = (\w+)", "\n".join(converted))
    assert engines and all(e.startswith("Replicated") for e in engines), engines
    assert "ENGINE = ReplicatedReplacingMergeTree(revision)" in "\n".join(converted)
    assert replicated_engines("CREATE TABLE t (x Int8) ENGINE = MergeTree ORDER BY x") == "CREATE TABLE t (x Int8) ENGINE = ReplicatedMergeTree ORDER BY x"
    assert replicated_engines("ENGINE = ReplicatedReplacingMergeTree") == "ENGINE = ReplicatedReplacingMergeTree"
    assert replicated_engines("SELECT 1") == "SELECT 1"
