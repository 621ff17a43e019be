"""Read queries on the ClickHouse store from any process: ``tickflow sql`` and the query API.

- A ClickHouse server (``CLICKHOUSE_URL=http://...``) is queried directly, through one pooled
  client per URL.
- Embedded chdb (``chdb:///path``) can be open in one process per path: the one running the
  ClickHouse sink (or a backfill). That process serves read queries on 127.0.0.1
  (:class:`QueryServer`) and records where, with a token, in ``<path>.query.json`` (mode 0600);
  others ask it over HTTP keep-alive connections. When no process owns the path, :func:`query`
  opens chdb for the one query and closes it again, so that a sink can start the next moment.

Every query runs read-only (ClickHouse's ``readonly=2``): writes and DDL are refused with
ClickHouse's own message. Results travel as Arrow, so every path gives the same Python types.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks.clickhouse import connect
from streams.settings import Settings

log = structlog.get_logger(__name__)

READ_ONLY = {"readonly": 2, "output_format_arrow_string_as_string": 1}
OWNER_CLIENTS = 4  # chdb handles the owner keeps for queries: concurrent queries beyond it wait
MAX_REQUEST_BYTES = 1_000_000
QUERY_TIMEOUT_S = 300.0
OWNER_WAIT_S = 5.0  # how long a store held by another process may take to answer before the query fails


class QueryError(RuntimeError):
    """The query failed: ClickHouse's message, or why the store could not be reached."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    column_names: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def query(settings: Settings, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
    """Run one read-only query on the ClickHouse store (thread-safe). Raises :class:`QueryError`.

    ``params`` bind ``{name:Type}`` placeholders, with JSON-representable values.
    """
    table = query_arrow(settings, sql, params)
    columns = [col.to_pylist() for col in table.columns]
    return QueryResult(tuple(table.column_names), list(zip(*columns, strict=True)) if columns else [])


def query_arrow(settings: Settings, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
    """:func:`query`'s result as an Arrow table."""
    dsn = settings.stores.clickhouse_dsn
    params = dict(params or {})
    if not dsn.startswith("chdb://"):
        return _read_arrow(_run(_server_client(dsn), sql, params))
    path = _chdb_path(dsn)
    deadline = time.monotonic() + OWNER_WAIT_S
    while True:
        owner = _owner(path)
        if owner is not None:
            try:
                return _read_arrow(owner.ask(sql, params))
            except httpx.TransportError:
                pass  # it stopped since it wrote its file: open the store here, or ask a newer owner
        try:
            return _read_arrow(_query_opening(dsn, sql, params))
        except _Locked as exc:
            # A process that is opening the store records its address a moment later.
            if time.monotonic() > deadline:
                raise QueryError(
                    f"the ClickHouse data at {path} is open in another process that does not answer queries "
                    f"(`tickflow migrate`, or a tickflow without query serving): {exc}"
                ) from None
            time.sleep(0.2)


def owner_file(path: Path) -> Path:
    """Where the process owning the chdb data at ``path`` records its query address."""
    return path.with_name(path.name + ".query.json")


class QueryServer:
    """Answers read queries for other processes on the chdb data this process has open.

    Runs in daemon threads of its own, with handles of its own on the engine: a query never holds
    up the sink's inserts beyond the engine's own sharing, and a failing query is only an answer.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.path = _chdb_path(dsn)
        self.token = secrets.token_urlsafe(24)
        self._clients: queue.LifoQueue[Client] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, name="clickhouse-query-server", daemon=True)

    def start(self) -> QueryServer:
        self._thread.start()
        _write_private(owner_file(self.path), json.dumps({"pid": os.getpid(), "url": self.url, "token": self.token}))
        with _state_lock:
            _local[self.path] = self
        log.info("answering ClickHouse queries for other processes", url=self.url, data=str(self.path))
        return self

    def run(self, sql: str, params: dict[str, Any]) -> bytes:
        """The query's result as Arrow bytes (QueryError with ClickHouse's message)."""
        with self._client() as client:
            return _run(client, sql, params)

    @contextlib.contextmanager
    def _client(self) -> Iterator[Client]:
        with self._lock:
            make = self._clients.empty() and self._made < OWNER_CLIENTS
            if make:
                self._made += 1
        client = connect(self.dsn) if make else self._clients.get()
        try:
            yield client
        finally:
            self._clients.put(client)

    def close(self) -> None:
        with _state_lock:
            if _local.get(self.path) is self:
                del _local[self.path]
        with contextlib.suppress(OSError, ValueError):
            if json.loads(owner_file(self.path).read_text()).get("url") == self.url:
                owner_file(self.path).unlink()
        self._http.shutdown()
        self._http.server_close()
        while not self._clients.empty():
            self._clients.get().close()


def _handler(server: QueryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a caller's connection is reused
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
            if self.headers.get("Authorization") != f"Bearer {server.token}":
                return self._reply(HTTPStatus.UNAUTHORIZED, b"bad token", "text/plain")
            size = int(self.headers.get("Content-Length") or 0)
            if self.path != "/query" or not 0 < size <= MAX_REQUEST_BYTES:
                return self._reply(HTTPStatus.BAD_REQUEST, b"POST /query with a JSON body", "text/plain")
            try:
                body = json.loads(self.rfile.read(size))
                data = server.run(str(body["sql"]), dict(body.get("params") or {}))
            except QueryError as exc:
                return self._reply(HTTPStatus.BAD_REQUEST, str(exc).encode(), "text/plain")
            except Exception as exc:  # a bad request or a bug: an answer, never the sink's end
                log.warning("query for another process failed", error=f"{type(exc).__name__}: {exc}")
                return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}".encode(), "text/plain")
            self._reply(HTTPStatus.OK, data, "application/vnd.apache.arrow.file")

        def _reply(self, status: HTTPStatus, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            """Silent: the caller reports its own errors."""

    return Handler


# -- the caller's side


@dataclass(frozen=True, slots=True)
class _Owner:
    url: str
    token: str
    local: QueryServer | None = None

    def ask(self, sql: str, params: dict[str, Any]) -> bytes:
        if self.local is not None:
            return self.local.run(sql, params)
        reply = _http_client().post(f"{self.url}/query", json={"sql": sql, "params": params}, headers={"Authorization": f"Bearer {self.token}"})
        if reply.status_code != HTTPStatus.OK:
            raise QueryError(reply.text.strip())
        return reply.content


class _Locked(Exception):
    """chdb could not open the data: another process has it open."""


_state_lock = threading.Lock()
_local: dict[Path, QueryServer] = {}  # servers of this process, asked without HTTP
_servers: dict[str, Client] = {}
_http: httpx.Client | None = None
_opening = threading.Lock()  # one chdb engine per process: queries that open it take turns


def _owner(path: Path) -> _Owner | None:
    with _state_lock:
        local = _local.get(path)
    if local is not None:
        return _Owner(local.url, local.token, local)
    try:
        info = json.loads(owner_file(path).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no owner, or it died without removing its file
    return _Owner(str(info["url"]), str(info["token"]))


def _http_client() -> httpx.Client:
    global _http
    with _state_lock:
        if _http is None:
            _http = httpx.Client(timeout=httpx.Timeout(QUERY_TIMEOUT_S, connect=3.0))
        return _http


def _server_client(dsn: str) -> Client:
    with _state_lock:
        client = _servers.get(dsn)
        if client is None:
            try:
                # No session: one client then serves concurrent queries over its connection pool.
                client = _servers[dsn] = connect(dsn, autogenerate_session_id=False, send_receive_timeout=QUERY_TIMEOUT_S)
            except ClickHouseError as exc:
                raise QueryError(str(exc).strip()) from None
        return client


def _query_opening(dsn: str, sql: str, params: dict[str, Any]) -> bytes:
    with _opening:
        try:
            client = connect(dsn)
        except ClickHouseError as exc:
            raise _Locked(str(exc).strip()) from None
        try:
            return _run(client, sql, params)
        finally:
            client.close()  # releases the data for a sink that starts next


def _run(client: Client, sql: str, params: dict[str, Any]) -> bytes:
    try:
        return client.raw_query(sql, parameters=params or None, settings=READ_ONLY, fmt="Arrow")
    except ClickHouseError as exc:
        raise QueryError(str(exc).strip()) from None


def _read_arrow(data: bytes) -> pa.Table:
    if not data:  # a statement without a result set
        return pa.table({})
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


def _chdb_path(dsn: str) -> Path:
    return Path(dsn.removeprefix("chdb://"))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by this user only, replacing any older file at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
