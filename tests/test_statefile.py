"""Local state files: never damaged by a full disk, a read-only directory or a crash mid-write,
and a damaged one is refused rather than trusted."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import orjson
import pytest

from streams.statefile import StateFileError, decode_state, encode_state, read_state, write_state


def test_a_state_round_trips_and_a_missing_file_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    assert read_state(path) is None
    write_state(path, {"heights": [[1, "a"], [2, "b"]]})
    write_state(path, {"heights": [[2, "b"], [3, "c"]]})
    assert read_state(path) == {"heights": [[2, "b"], [3, "c"]]}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_plain_json_of_earlier_versions_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_bytes(orjson.dumps({"asset": "btc", "heights": [[7, "x"]]}))
    assert read_state(path) == {"asset": "btc", "heights": [[7, "x"]]}


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_state_file_is_refused_with_its_path(tmp_path: Path, damage: str) -> None:
    data = bytearray(encode_state({"heights": [[1, "a" * 64]]}))
    if damage == "flip":
        data[-5] ^= 0x01
    elif damage == "truncate":
        data = data[:-3]
    else:
        data = bytearray(b"\x00\x17 not json")
    path = tmp_path / "state.json"
    path.write_bytes(bytes(data))
    with pytest.raises(StateFileError, match="state.json: damaged state file"):
        read_state(path)
    with pytest.raises(StateFileError):
        decode_state(bytes(data))


@pytest.mark.parametrize(("where", "code"), [("write", errno.ENOSPC), ("open", errno.EROFS), ("fsync", errno.EIO), ("replace", errno.ENOSPC)])
def test_a_failing_write_keeps_the_previous_state_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int) -> None:
    """ENOSPC, EROFS or EIO at each step of the write, injected at the OS boundary."""
    path = tmp_path / "state.json"
    write_state(path, {"heights": [[1, "a"]]})

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    real_open = os.open
    if where == "open":
        monkeypatch.setattr(os, "open", lambda p, *a, **k: fail() if str(p).endswith(".tmp") else real_open(p, *a, **k))
    elif where == "write":
        real_write = os.write
        monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:10])) if len(data) > 10 else fail())
    else:
        monkeypatch.setattr(os, where, fail)
    with pytest.raises(StateFileError, match=f"cannot save {path}: {os.strerror(code)}; the previous state is kept") as failed:
        write_state(path, {"heights": [[1, "a"], [2, "b"]]})
    monkeypatch.undo()
    assert failed.value.errno == code
    assert read_state(path) == {"heights": [[1, "a"]]}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_directory_where_the_state_file_should_be_is_a_clear_error(tmp_path: Path) -> None:
    """What root cannot chmod its way around: a file where the state directory should be."""
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(StateFileError, match="cannot save .*data/bitcoind/state.json: Not a directory"):
        write_state(tmp_path / "data" / "bitcoind" / "state.json", {"heights": []})
