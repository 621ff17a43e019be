"""Run the gateway under uvicorn: the one place its server options are set."""

from __future__ import annotations

import uvicorn

from streams.gateway.app import create_app
from streams.gateway.store import Store
from streams.settings import Settings

WS_MAX_BYTES = 64 * 1024  # larger client frames are refused by the server (close 1009) before parsing


def config(settings: Settings, host: str, port: int, store: Store | None = None) -> uvicorn.Config:
    """uvicorn with httptools and websockets; protocol-level pings find dead clients within 40 s.

    No per-message deflate: a room's frame is encoded once and written as is to every client
    (:mod:`streams.gateway.ws`), which per-connection compression would forbid, and market-data
    messages are small. No proxy headers: nothing here uses the client's address (limits are per key)."""
    return uvicorn.Config(
        create_app(settings, store), host=host, port=port, log_config=None, access_log=False, lifespan="on",
        http="httptools", ws="websockets-sansio", ws_max_size=WS_MAX_BYTES, ws_ping_interval=20.0, ws_ping_timeout=20.0,
        ws_per_message_deflate=False, proxy_headers=False, loop="uvloop", backlog=4096, timeout_keep_alive=30,
    )


def serve(settings: Settings, host: str, port: int) -> None:
    uvicorn.Server(config(settings, host, port)).run()
