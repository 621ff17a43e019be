"""``replay:PATH --format bitcoind-json``: recorded Bitcoin Core RPC responses as ``onchain_block``
records, as ``../shared/data/bitcoin_onchain_sample/`` holds them.

PATH is a file, a folder (its ``*.json``) or a glob (``folder/*rpc_response*.json``). Each file is a
JSON-RPC envelope or a bare result: ``getblock`` results (verbosity 2 or 3) become blocks, in height
order, each hash once; ``getrawtransaction`` results resolve the inputs that spend their outputs;
the times of recorded blocks and ``getblockheader`` results date the verbosity-3 prevouts (which
carry their creation height only); block hashes and counts are read and not needed. A file that is not JSON, an error envelope, or a block that cannot be
used goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import glob
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import structlog

from streams.sources.base import BadInput, Record, Source, SourceItem
from streams.sources.bitcoin_json import BlockError, RpcError, kind_of, parse_block, unwrap

log = structlog.get_logger(__name__)


def replay_files(spec: str | Path) -> list[Path]:
    text = str(spec)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text))
    else:
        path = Path(text)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not all(f.exists() for f in files):
        raise FileNotFoundError(f"no recorded bitcoind responses at {text}")
    return files


class BitcoindReplaySource(Source):
    def __init__(self, path: str | Path, *, asset: str = "btc") -> None:
        self.files = replay_files(path)
        self.asset = asset
        self._stopped = False

    def _load(self) -> tuple[list[tuple[int, str, Any]], dict[str, Any], dict[int, int], list[BadInput]]:
        blocks: dict[str, tuple[int, str, Any]] = {}
        raw: dict[str, Any] = {}
        times: dict[int, int] = {}  # height -> block time, from recorded blocks and headers
        bad: list[BadInput] = []
        for f in self.files:
            data = f.read_bytes()
            try:
                result = unwrap(orjson.loads(data))
            except orjson.JSONDecodeError as exc:
                bad.append(BadInput(f"{f.name}: not JSON ({exc})", data))
                continue
            except RpcError as exc:
                bad.append(BadInput(f"{f.name}: {exc}", data))
                continue
            kind = kind_of(result)
            if kind in ("block", "header") and isinstance(result["height"], int) and isinstance(result.get("time"), int):
                times[result["height"]] = result["time"]
            if kind == "block":
                blocks.setdefault(result["hash"], (result["height"] if isinstance(result["height"], int) else -1, f.name, result))
            elif kind == "tx":
                raw[result["txid"]] = result
            elif kind is None:
                bad.append(BadInput(f"{f.name}: not a recorded bitcoind RPC response", data))
        return sorted(blocks.values(), key=lambda b: (b[0], b[1])), raw, times, bad

    async def stream(self) -> AsyncIterator[SourceItem]:
        blocks, raw, times, bad = await asyncio.get_running_loop().run_in_executor(None, self._load)
        for item in bad:
            yield item
        produced = 0
        for _, name, result in blocks:
            if self._stopped:
                break
            try:
                block = parse_block(result, self.asset, raw_tx=raw.get, height_time=times.get)
            except BlockError as exc:
                yield BadInput(f"{name}: {exc}", orjson.dumps(result))
                continue
            produced += 1
            yield Record("onchain_block", block.asset, block)
        log.info("bitcoind replay finished", files=len(self.files), blocks=produced, bad=len(bad))

    async def aclose(self) -> None:
        self._stopped = True
