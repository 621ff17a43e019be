"""A local Bitcoin Core JSON-RPC server that plays recorded responses (../shared/data/bitcoin_onchain_sample).

It answers ``getblockcount`` (the tip the test sets), ``getblockhash``, ``getblock <hash> 2``,
``getblockheader`` and ``getrawtransaction <txid> true``, single or batched, with HTTP basic auth.
``getblock <hash> 3`` fails with -8, as on nodes older than Core 25, unless ``verbosity3``: then each
input carries its ``prevout`` (generated, height, value, scriptPubKey) as Core 25+ gives it, built from
the recorded ``getrawtransaction`` results; the creating blocks' heights come from the recorded
confirmation counts and their headers are served too. A test makes a reorg by replacing the block at a height (:meth:`FakeBitcoind.put_block`).
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from streams.broker import free_port
from streams.sources.bitcoin_json import kind_of, unwrap


class FakeBitcoind:
    def __init__(self, folder: Path, *, user: str = "rpc", password: str = "secret", verbosity3: bool = False) -> None:
        self.blocks: dict[str, dict[str, Any]] = {}  # hash -> getblock 2 result
        self.by_height: dict[int, str] = {}
        self.raw: dict[str, dict[str, Any]] = {}
        self.verbosity3 = verbosity3
        self.verbosities: list[int] = []  # of each getblock call
        for f in sorted(folder.glob("*rpc_response*.json")):
            r = unwrap(json.loads(f.read_text()))
            if kind_of(r) == "block" and r["tx"]:
                self.put_block(r)
            elif kind_of(r) == "tx":
                self.raw[r["txid"]] = r
        self.tip = max(self.by_height)
        # Headers of the blocks that created the recorded transactions (not recorded themselves). Their
        # heights: the tip when the block spending them was recorded (files were recorded at
        # different tips), less their confirmations.
        tip_spending = {vin["txid"]: b["height"] + b["confirmations"] - 1 for b in self.blocks.values() for tx in b["tx"] for vin in tx["vin"] if "txid" in vin}
        self.headers: dict[str, dict[str, Any]] = {}
        self.header_heights: dict[int, str] = {}
        for r in self.raw.values():
            h = tip_spending[r["txid"]] - r["confirmations"] + 1
            self.headers[r["blockhash"]] = {"hash": r["blockhash"], "height": h, "time": r["blocktime"]}
            self.header_heights[h] = r["blockhash"]
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.calls: list[str] = []
        self.warming_up = 0  # answer this many calls with error -28 (the node is starting)
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def put_block(self, block: dict[str, Any]) -> None:
        self.blocks[block["hash"]] = block
        self.by_height[block["height"]] = block["hash"]

    def fork(self, height: int, tag: str) -> dict[str, Any]:
        """A copy of the block at ``height`` with another hash (a competing block), put in place."""
        b = copy.deepcopy(self.blocks[self.by_height[height]])
        b["hash"] = (tag * 64)[:64]
        b["time"] += 1
        self.put_block(b)
        return b

    def extend(self, tag: str) -> dict[str, Any]:
        """A new tip on top of the current one (a copy of it with a coinbase only)."""
        top = self.blocks[self.by_height[self.tip]]
        b = copy.deepcopy(top)
        b.update(hash=(tag * 64)[:64], height=self.tip + 1, previousblockhash=top["hash"], time=top["time"] + 600, tx=top["tx"][:1], nTx=1)
        self.put_block(b)
        self.tip += 1
        return b

    def _answer(self, call: dict[str, Any]) -> dict[str, Any]:
        method, params = call.get("method"), call.get("params") or []
        self.calls.append(method)
        result: Any = None
        error = None
        if self.warming_up > 0:
            self.warming_up -= 1
            return {"result": None, "error": {"code": -28, "message": "Loading block index..."}, "id": call.get("id")}
        if method == "getblockcount":
            result = self.tip
        elif method == "getblockhash":
            result = self.by_height.get(params[0], self.header_heights.get(params[0])) if params[0] <= self.tip else None
            if result is None:
                error = {"code": -8, "message": "Block height out of range"}
        elif method in ("getblock", "getblockheader"):
            verbosity = params[1] if len(params) > 1 else 1
            b = self.blocks.get(params[0])
            if method == "getblock":
                self.verbosities.append(verbosity)
            if b is None and method == "getblockheader" and params[0] in self.headers:
                result = self.headers[params[0]]
            elif b is None:
                error = {"code": -5, "message": "Block not found"}
            elif method == "getblock" and verbosity == 3:
                if self.verbosity3:
                    result = self._with_prevouts(b)
                else:
                    error = {"code": -8, "message": "Verbosity was 3, must be 0, 1 or 2"}
            else:
                result = b if method == "getblock" else {k: v for k, v in b.items() if k != "tx"}
        elif method == "getrawtransaction":
            result = self.raw.get(params[0])
            if result is None:
                error = {"code": -5, "message": "No such mempool or blockchain transaction. Use -txindex"}
        else:
            error = {"code": -32601, "message": "Method not found"}
        return {"result": result, "error": error, "id": call.get("id")}

    def _with_prevouts(self, block: dict[str, Any]) -> dict[str, Any]:
        """``getblock <hash> 3``: the block with each input's ``prevout`` (an input whose funding
        transaction is not recorded gets none, as the source must then cope)."""
        b = copy.deepcopy(block)
        for tx in b["tx"]:
            for vin in tx["vin"]:
                src = self.raw.get(vin.get("txid", ""))
                if src is None:
                    continue
                out = next(o for o in src["vout"] if o["n"] == vin["vout"])
                coinbase = "coinbase" in src["vin"][0]
                vin["prevout"] = {"generated": coinbase, "height": self.headers[src["blockhash"]]["height"], "value": out["value"], "scriptPubKey": out["scriptPubKey"]}
        return b

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != fake.auth:
                    self.send_response(401)
                    self.end_headers()
                    return
                req = json.loads(body)
                reply = [fake._answer(c) for c in req] if isinstance(req, list) else fake._answer(req)
                data = json.dumps(reply).encode()
                self.send_response(200 if isinstance(req, list) or reply["error"] is None else 500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def __enter__(self) -> FakeBitcoind:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
