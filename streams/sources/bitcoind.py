"""``bitcoind:URL``: a Bitcoin Core node over JSON-RPC, following the chain tip, as ``onchain_block``
records keyed by asset.

- Reads ``getblockcount``, then ``getblockhash`` and ``getblock <hash> 3`` for each new height
  (``getblock <hash> 2`` on nodes without verbosity 3, whose inputs are then resolved with
  ``getrawtransaction <txid> true`` in one batch request per block; that needs ``txindex=1``,
  otherwise the inputs stay unresolved and fees, addresses, flows and SOPR of their day are null).
- Auth: ``BITCOIND_RPC_USER``/``BITCOIND_RPC_PASSWORD``, else the cookie file
  (``BITCOIND_COOKIE_FILE``, default ``~/.bitcoin/.cookie``), read again after a 401 (the node
  writes a new cookie at each start).
- Resumes after a restart from the last height the broker acknowledged (the recent heights and
  hashes are saved in ``TICKFLOW_DATA_DIR/bitcoind/bitcoind-<asset>.json`` once a block is delivered, never before).
- Reorgs: when a new block's parent is not the block read at the height below, the source walks
  back to the last height whose hash the node still has and reads again from the next one; the
  on-chain agent retracts the replaced blocks from their days and revises them.
- Transport errors and node errors are retried with exponential backoff (the node may be
  starting or reindexing); a block that cannot be parsed goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from streams.sources.base import BadInput, Record, Source, SourceItem
from streams.sources.bitcoin_json import BlockError, RpcError, parse_block, prevout_heights, spent_txids, unwrap
from streams.statefile import read_state, write_state

log = structlog.get_logger(__name__)

HEIGHTS_SAVED = 200  # recent (height, hash) pairs kept for resuming and finding a fork
MAX_BLOCK_FAILURES = 10  # consecutive refusals of the next block before the source gives up
RPC_METHOD_NOT_FOUND, RPC_INVALID_PARAMETER, RPC_IN_WARMUP = -32601, -8, -28


class BitcoindRpc:
    """A small async JSON-RPC 1.0 client (single and batch calls) with retries."""

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None, cookie_file: Path | None = None, timeout: float = 60.0, attempts: int = 8) -> None:
        self.url = url
        self.user, self.password = user, password
        self.cookie_file = cookie_file if cookie_file is not None else (None if user else Path.home() / ".bitcoin" / ".cookie")
        self._http = httpx.AsyncClient(timeout=timeout)
        self._ids = itertools.count()
        self.attempts = attempts
        self._cookie: tuple[str, str] | None = None

    def _auth(self) -> tuple[str, str] | None:
        if self.user:
            return (self.user, self.password or "")
        if self._cookie is None and self.cookie_file is not None and self.cookie_file.exists():
            user, _, pw = self.cookie_file.read_text().strip().partition(":")
            self._cookie = (user, pw)
        return self._cookie

    async def _post(self, body: Any) -> Any:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((httpx.TransportError, _Retry)),
            wait=wait_exponential(multiplier=0.2, max=10),
            stop=stop_after_attempt(self.attempts),
            reraise=True,
        ):
            with attempt:
                r = await self._http.post(self.url, content=orjson.dumps(body), auth=self._auth(), headers={"Content-Type": "application/json"})
                if r.status_code == 401:
                    self._cookie = None  # the node may have restarted with a new cookie
                    raise _Retry(f"bitcoind at {self.url} refused the credentials (401)")
                if r.status_code >= 500 and not r.content:
                    raise _Retry(f"bitcoind answered {r.status_code}")
                return orjson.loads(r.content)
        raise AssertionError("unreachable")

    async def call(self, method: str, *params: Any) -> Any:
        """One call; a node still starting (error -28, warming up) is asked again with backoff."""
        for attempt in range(self.attempts):
            try:
                return unwrap(await self._post({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}))
            except RpcError as exc:
                if exc.code != RPC_IN_WARMUP or attempt == self.attempts - 1:
                    raise
                log.info("bitcoind is starting; asking again", error=str(exc))
                await asyncio.sleep(min(0.2 * 2**attempt, 10.0))
        raise AssertionError("unreachable")

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Results in call order; an error result is returned as the ``RpcError``, not raised."""
        if not calls:
            return []
        first = next(self._ids)
        body = [{"jsonrpc": "1.0", "id": first + i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        for _ in calls[1:]:
            next(self._ids)
        replies = await self._post(body)
        by_id = {r.get("id"): r for r in replies} if isinstance(replies, list) else {}
        out: list[Any] = []
        for i in range(len(calls)):
            reply = by_id.get(first + i)
            try:
                out.append(unwrap(reply) if reply is not None else RpcError(None, "no reply in the batch"))
            except RpcError as exc:
                out.append(exc)
        return out

    async def aclose(self) -> None:
        await self._http.aclose()


class _Retry(RuntimeError):
    pass


class BitcoindSource(Source):
    def __init__(
        self,
        url: str,
        *,
        state_dir: Path,
        asset: str = "btc",
        start_height: int = 0,
        poll_s: float = 5.0,
        confirmations: int = 0,
        follow: bool = True,
        user: str | None = None,
        password: str | None = None,
        cookie_file: Path | None = None,
        rpc_attempts: int = 8,
    ) -> None:
        self.rpc = BitcoindRpc(url, user=user, password=password, cookie_file=cookie_file, attempts=rpc_attempts)
        self.asset = asset
        self.start_height = start_height
        self.poll_s = poll_s
        self.confirmations = confirmations
        self.follow = follow
        self.state_path = state_dir / f"bitcoind-{asset}.json"
        self.saved: dict[int, str] = self._read_state()  # what the broker has: the resume point
        self.recent: dict[int, str] = dict(self.saved)  # what was read: the chain followed
        self.verbosity = 3
        self._times: dict[int, int] = {}  # height -> block time, for verbosity 3 prevouts
        self._stop = asyncio.Event()

    # saved position
    def _read_state(self) -> dict[int, str]:
        doc = read_state(self.state_path)
        return {} if doc is None else {int(h): x for h, x in doc["heights"]}

    def _delivered(self, height: int, block_hash: str) -> Callable[[], None]:
        def save() -> None:
            self.saved[height] = block_hash
            for h in [h for h in self.saved if h > height]:
                del self.saved[h]  # a reorg delivered a lower block: what was above it is gone
            for h in sorted(self.saved)[:-HEIGHTS_SAVED]:
                del self.saved[h]
            write_state(self.state_path, {"asset": self.asset, "heights": sorted(self.saved.items())})

        return save

    @property
    def next_height(self) -> int:
        return max(self.recent) + 1 if self.recent else self.start_height

    def _advance(self, height: int, block_hash: str) -> None:
        self.recent[height] = block_hash
        for h in sorted(self.recent)[:-HEIGHTS_SAVED]:
            del self.recent[h]

    async def stream(self) -> AsyncIterator[SourceItem]:
        log.info("bitcoind source started", url=self.rpc.url, asset=self.asset, from_height=self.next_height)
        failures = 0
        while not self._stop.is_set():
            tip = await self.rpc.call("getblockcount") - self.confirmations
            if self.next_height > tip:
                last = self.next_height - 1
                if last in self.recent and last <= tip and await self.rpc.call("getblockhash", last) != self.recent[last]:
                    await self._rewind(last)  # a branch no longer than ours replaced our last blocks
                    continue
                if not self.follow:
                    break
                try:
                    await asyncio.wait_for(self._stop.wait(), self.poll_s)
                except TimeoutError:
                    pass
                continue
            height = self.next_height
            try:
                block_hash = await self.rpc.call("getblockhash", height)
                result = await self._getblock(block_hash)
            except RpcError as exc:
                # The tip moved between the calls (a reorg to a shorter chain, a block just replaced):
                # ask for the tip again; a block the node keeps refusing (pruned) stops the source.
                failures += 1
                if failures >= MAX_BLOCK_FAILURES:
                    raise RuntimeError(f"bitcoind refused block {height} {MAX_BLOCK_FAILURES} times: {exc}") from exc
                log.warning("block not available, reading the tip again", height=height, error=str(exc))
                await asyncio.sleep(min(self.poll_s, 1.0))
                continue
            failures = 0
            parent = result.get("previousblockhash") if isinstance(result, dict) else None
            if height - 1 in self.recent and parent is not None and parent != self.recent[height - 1]:
                await self._rewind(height - 1)
                continue
            try:
                block = await self._parse(result)
            except BlockError as exc:
                self._advance(height, block_hash)  # skipped for good, with its reason in the dead-letter topic
                yield BadInput(f"block {height} {block_hash}: {exc}", orjson.dumps(result))
                continue
            self._advance(height, block_hash)
            yield Record("onchain_block", self.asset, block, on_delivered=self._delivered(height, block_hash))
        log.info("bitcoind source stopped", next_height=self.next_height, delivered_up_to=max(self.saved, default=None))

    async def _rewind(self, height: int) -> None:
        """Forget blocks above the last height the node's chain still has (a reorg)."""
        h = height
        while h in self.recent:
            if await self.rpc.call("getblockhash", h) == self.recent[h]:
                break
            h -= 1
        fork = h + 1
        if h not in self.recent:
            log.error("reorg deeper than the remembered heights: reading again from the oldest", oldest=fork)
        log.warning("reorg: reading again from the fork", fork_height=fork, replaced=sorted(x for x in self.recent if x >= fork))
        for x in [x for x in self.recent if x >= fork]:
            del self.recent[x]
        if not self.recent:
            self.start_height = fork

    async def _getblock(self, block_hash: str) -> Any:
        if self.verbosity == 3:
            try:
                return await self.rpc.call("getblock", block_hash, 3)
            except RpcError as exc:
                if exc.code not in (RPC_INVALID_PARAMETER, RPC_METHOD_NOT_FOUND, None):
                    raise
                log.info("node has no getblock verbosity 3; using 2 and getrawtransaction", error=str(exc))
                self.verbosity = 2
        return await self.rpc.call("getblock", block_hash, 2)

    async def _parse(self, result: Any) -> Any:
        raw: dict[str, Any] = {}
        if isinstance(result, dict):
            txids = sorted(spent_txids(result))
            if txids:
                for txid, r in zip(txids, await self.rpc.batch([("getrawtransaction", [t, True]) for t in txids]), strict=True):
                    if not isinstance(r, RpcError):
                        raw[txid] = r
                if len(raw) < len(txids):
                    log.warning("inputs left unresolved (does the node have txindex=1?)", height=result.get("height"), missing=len(txids) - len(raw))
            heights = sorted(h for h in prevout_heights(result) if h not in self._times)
            if heights:
                hashes = await self.rpc.batch([("getblockhash", [h]) for h in heights])
                headers = await self.rpc.batch([("getblockheader", [x]) for x in hashes if not isinstance(x, RpcError)])
                for hdr in headers:
                    if isinstance(hdr, dict):
                        self._times[hdr["height"]] = hdr["time"]
                if len(self._times) > 200_000:
                    self._times.clear()
        return parse_block(result, self.asset, raw_tx=raw.get, height_time=self._times.get)

    async def aclose(self) -> None:
        self._stop.set()
        await self.rpc.aclose()
