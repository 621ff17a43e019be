"""Small local state files (a source's saved position) that a crash, a full disk or a read-only
directory never leaves damaged.

A write goes to a temporary file beside the target, is fsynced, renamed over the target and the
directory fsynced: the target is the old state or the new one, never half of either. The body
carries its length and CRC-32 in a header line, so a file damaged anyway (a disk error, an edit)
is refused with its path instead of being trusted. Files written before this format (plain JSON)
are still read.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path
from typing import Any

import orjson

MAGIC = b"TFSTATE1"


class StateFileError(OSError):
    """A state file could not be written (the previous one is intact) or is damaged."""


def encode_state(doc: Any) -> bytes:
    body = orjson.dumps(doc)
    return b"%s %08x %d\n%s" % (MAGIC, zlib.crc32(body), len(body), body)


def decode_state(data: bytes, path: Path | str = "state") -> Any:
    """The document of a state file's bytes; StateFileError when the checksum or length disagree."""
    if not data.startswith(MAGIC):
        try:
            return orjson.loads(data)  # the plain JSON of earlier versions
        except orjson.JSONDecodeError as exc:
            raise StateFileError(f"{path}: damaged state file ({exc})") from None
    header, _, body = data.partition(b"\n")
    try:
        _, crc, length = header.split(b" ")
        ok = int(length) == len(body) and int(crc, 16) == zlib.crc32(body)
    except ValueError:
        ok = False
    if not ok:
        raise StateFileError(f"{path}: damaged state file (length or checksum wrong): move it away to start from scratch")
    return orjson.loads(body)


def read_state(path: Path) -> Any | None:
    """The saved document, or None when there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(exc.errno, f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_state(data, path)


def write_state(path: Path, doc: Any) -> None:
    """Replace ``path`` with ``doc`` atomically and durably; StateFileError (the old file intact,
    no temporary file left) when the directory is full, read-only or missing."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(encode_state(doc))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateFileError(exc.errno, f"cannot save {path}: {exc.strerror or exc}; the previous state is kept") from exc
    with contextlib.suppress(OSError):  # the rename made durable; either file is whole if this fails
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
