"""A requested stop (SIGTERM from systemd, Kubernetes or a script; SIGINT from Ctrl-C) ends a
process the same way: it finishes and commits the work in hand, then exits 0."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(stop: Callable[[], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
    """Call ``stop`` when one of ``signals`` arrives (main thread only, like every signal handler).

    ``stop`` runs in a thread of its own: the handler runs between two bytecodes of the main thread,
    which may hold the very lock that ``stop`` takes (``threading.Event.set``, a multiprocessing event).
    """

    def handler(signum: int, _frame: object) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        threading.Thread(target=stop, name="stop-request", daemon=True).start()

    for sig in signals:
        signal.signal(sig, handler)
