"""Bitcoin Core JSON-RPC results -> ``OnchainBlock`` records, pure (shared by the ``bitcoind:`` source
and ``replay:PATH --format bitcoind-json``).

``getblock <hash> 2`` lists each input's previous output only by (txid, n); ``getblock <hash> 3``
(Bitcoin Core 25+) adds the ``prevout`` with its value, script and creation height. Inputs without a
prevout are resolved through ``getrawtransaction <txid> true`` results (what bitcoin-etl does; the
node needs ``txindex=1``); an input neither gives stays unresolved (value None), so the metrics
that need it are null rather than wrong (bitcoin-etl counts such an input as 0 and reports a
negative fee).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from schemas.models import OnchainBlock, OnchainInput, OnchainOutput, OnchainTx


class BlockError(ValueError):
    """A response that is not a usable block; the message says why."""


class RpcError(RuntimeError):
    """The node answered with an error object."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(f"RPC error {code}: {message}")
        self.code = code


def unwrap(doc: Any) -> Any:
    """The result of a JSON-RPC envelope (``{"result", "error", "id"}``), or a bare result as is."""
    if isinstance(doc, dict) and "result" in doc and "error" in doc and set(doc) <= {"result", "error", "id", "jsonrpc"}:
        err = doc["error"]
        if err is not None:
            raise RpcError(err.get("code") if isinstance(err, dict) else None, err.get("message", str(err)) if isinstance(err, dict) else str(err))
        return doc["result"]
    return doc


def kind_of(result: Any) -> str | None:
    """What a bare RPC result is: ``block``, ``header`` (getblockheader), ``tx`` (getrawtransaction
    verbose), ``hash``, ``count``."""
    if isinstance(result, dict):
        if "tx" in result and "height" in result and "hash" in result:
            return "block"
        if "height" in result and "hash" in result and "time" in result:
            return "header"
        if "txid" in result and "vin" in result and "vout" in result:
            return "tx"
        return None
    if isinstance(result, str) and len(result) == 64:
        return "hash"
    if isinstance(result, int) and not isinstance(result, bool):
        return "count"
    return None


def sats(value: Any) -> int:
    """BTC amount (a JSON number with up to 8 decimals) -> satoshis, exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0 or value > 21e6:
        raise BlockError(f"amount {value!r} is not a valid BTC value")
    return round(value * 100_000_000)


def script_address(spk: Mapping[str, Any] | None) -> str | None:
    """The address of an output script: ``address`` (Core 22+) or ``addresses`` (older; a bare
    multisig's keys joined with ``,``, counted as one address)."""
    if not spk:
        return None
    addr = spk.get("address")
    if addr:
        return str(addr)
    addrs = spk.get("addresses")
    if addrs:
        return ",".join(addrs) if len(addrs) > 1 else str(addrs[0])
    return None


def spent_txids(block: Mapping[str, Any]) -> set[str]:
    """Txids whose outputs the block spends without a ``prevout`` (to look up with getrawtransaction)."""
    out = set()
    for tx in block.get("tx") or ():
        if not isinstance(tx, dict):
            continue
        for vin in tx.get("vin") or ():
            if isinstance(vin, dict) and "coinbase" not in vin and "prevout" not in vin and "txid" in vin:
                out.add(vin["txid"])
    return out


def prevout_heights(block: Mapping[str, Any]) -> set[int]:
    """Creation heights of the outputs a ``getblock 3`` block spends (for their block times)."""
    out = set()
    for tx in block.get("tx") or ():
        for vin in tx.get("vin") or ():
            p = vin.get("prevout") if isinstance(vin, dict) else None
            if isinstance(p, dict) and isinstance(p.get("height"), int):
                out.add(p["height"])
    return out


def parse_block(
    result: Any,
    asset: str = "btc",
    *,
    raw_tx: Callable[[str], Mapping[str, Any] | None] = lambda _txid: None,
    height_time: Callable[[int], int | None] = lambda _h: None,
) -> OnchainBlock:
    """A ``getblock`` result at verbosity 2 or 3 as a block record.

    ``raw_tx(txid)`` gives a ``getrawtransaction`` verbose result or None; ``height_time(h)`` the
    time of block ``h`` or None (for verbosity 3 prevouts, which carry the height only).
    """
    if kind_of(result) != "block":
        raise BlockError("not a getblock result (no hash, height and tx)")
    try:
        height, block_hash, t = result["height"], result["hash"], result["time"]
        if not isinstance(height, int) or height < 0 or not isinstance(t, int) or t <= 0:
            raise BlockError(f"block {block_hash} has height {height!r} and time {t!r}")
        txs_json = result["tx"]
        n_tx = result.get("nTx")
        if n_tx is not None and n_tx != len(txs_json):
            raise BlockError(f"block {height} {block_hash}: nTx is {n_tx} but {len(txs_json)} transactions are given (verbosity 0 or 1?)")
        txs = []
        for i, tx in enumerate(txs_json):
            if not isinstance(tx, dict):
                raise BlockError(f"block {height}: transaction {i} is {type(tx).__name__}, not an object (verbosity 1?)")
            vins = tx["vin"]
            coinbase = bool(vins) and "coinbase" in vins[0]
            inputs = [] if coinbase else [_input(vin, raw_tx, height_time) for vin in vins]
            outputs = [OnchainOutput(sats(o["value"]), script_address(o.get("scriptPubKey"))) for o in tx["vout"]]
            txs.append(OnchainTx(tx["txid"], coinbase, inputs, outputs))
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise BlockError(f"malformed block {result.get('height')!r}: {type(exc).__name__}: {exc}") from exc
    return OnchainBlock(asset, height, block_hash, result.get("previousblockhash"), t, txs)


def _input(vin: Mapping[str, Any], raw_tx: Callable[[str], Mapping[str, Any] | None], height_time: Callable[[int], int | None]) -> OnchainInput:
    prevout = vin.get("prevout")
    if prevout is not None:
        h = prevout.get("height")
        return OnchainInput(sats(prevout["value"]), script_address(prevout.get("scriptPubKey")), height_time(h) if isinstance(h, int) else None)
    src = raw_tx(vin["txid"])
    if src is None:
        return OnchainInput(None)
    n = vin["vout"]
    vout = src["vout"]
    spent = vout[n] if n < len(vout) and vout[n].get("n", n) == n else next((o for o in vout if o.get("n") == n), None)
    if spent is None:
        raise BlockError(f"transaction {vin['txid']} has no output {n}")
    created = src.get("blocktime")
    return OnchainInput(sats(spent["value"]), script_address(spent.get("scriptPubKey")), created if isinstance(created, int) else None)
