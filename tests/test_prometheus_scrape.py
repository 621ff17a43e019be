"""Prometheus (the Debian binary) against a running pipeline: every tickflow role that runs is up at
the port infra/prometheus/prometheus.yml gives it, the alert rules load, and every Grafana panel's
query parses and returns data.

``tickflow run --source synthetic`` runs the worker role (the agents, with ingest inside) and one
process per sink, with default settings: in-progress candles reach Redis through the agents' own
fan-out, which times the realtime path. One record that is not Avro goes to ``ticks``, so the
dead-letter panels have data. Panels of the
agents and gateway dashboards must return data when their role exports its metrics (the agent
runtime, ``tickflow serve``); otherwise their queries are only checked to parse.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from streams.broker import free_port
from streams.observability import ROLE_METRICS_PORTS

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "infra" / "prometheus" / "prometheus.yml"
DASHBOARDS = sorted((ROOT / "infra" / "grafana" / "dashboards").glob("*.json"))
WORKER_PORT = ROLE_METRICS_PORTS["worker"]
OPTIONAL = {"tickflow-agents.json": 'count({__name__=~"tickflow_agent_.+"})', "tickflow-gateway.json": 'up{job="tickflow-gateway"} == 1'}
pytestmark = pytest.mark.integration


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def metrics_base() -> int:
    """The worker's default port when every role port is free, else a free block at the same offsets
    (other test runs on this machine may hold the defaults)."""
    span = max(ROLE_METRICS_PORTS.values()) - WORKER_PORT
    for base in [WORKER_PORT, *range(20000, 60000, 97)]:
        if all(_free(base + i) for i in range(span + 1)):
            return base
    raise RuntimeError("no free block of metrics ports")


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every panel target."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["expr"]))
    return out


def test_config_scrapes_every_role_at_its_default_port() -> None:
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    ports = {name.removeprefix("tickflow-"): j["dns_sd_configs"][0]["port"] for name, j in jobs.items() if name.startswith("tickflow-")}
    assert ports == {**{role: port for role, port in ROLE_METRICS_PORTS.items() if role != "run"}, "gateway": 8000}  # run: the worker's port
    assert {p["datasource"]["uid"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]} == {"tickflow-prometheus"}
    datasource = yaml.safe_load((ROOT / "infra" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "tickflow-prometheus"


def local_config(tmp: Path, base: int, gateway_port: int) -> Path:
    """prometheus.yml with each role's DNS name replaced by 127.0.0.1 at the same port offset."""
    conf = yaml.safe_load(PROMETHEUS_YML.read_text())
    conf["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    conf["rule_files"] = [str(PROMETHEUS_YML.parent / f) for f in conf["rule_files"]]
    for job in conf["scrape_configs"]:
        for sd in job.pop("dns_sd_configs", []):
            port = gateway_port if job["job_name"] == "tickflow-gateway" else sd["port"] - WORKER_PORT + base
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    conf["scrape_configs"] = [j for j in conf["scrape_configs"] if j["job_name"] != "prometheus"]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT, wait_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_prometheus_scrapes_a_running_pipeline_and_every_panel_returns_data(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus missing: `make services` installs Debian's prometheus package")
    from streams.settings import Settings

    base, broker_port, prom_port = metrics_base(), free_port(), free_port()
    env = {
        **os.environ,
        "METRICS_PORT": str(base),
        "BROKER_PORT": str(broker_port),
        "TICKFLOW_DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "WARNING",
        "TICKS_PARTITIONS": "4",
    }
    env.pop("KAFKA_BOOTSTRAP", None)
    settings = Settings()
    sinks = ["clickhouse"] + (["postgres"] if settings.stores.database_url else []) + (["redis"] if settings.stores.redis_url else [])
    expected_up = {"tickflow-worker"} | {f"tickflow-sink-{n}" for n in sinks}

    log = (tmp_path / "pipeline.log").open("w")
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "streams", "run", "--source", "synthetic", "--rate", "500", "--quiet"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={local_config(tmp_path, base, free_port())}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    api = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}/api/v1", timeout=5)

    def query(expr: str) -> list:
        response = api.get("/query", params={"query": expr})
        response.raise_for_status()  # 503 while Prometheus is starting: wait_for retries
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def wait_for(what: str, check, timeout_s: float):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + timeout_s
        while True:
            assert pipeline.poll() is None, f"tickflow run exited: {(tmp_path / 'pipeline.log').read_text()[-3000:]}"
            try:
                got = check()
            except httpx.HTTPError:
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout_s}s; pipeline log: {(tmp_path / 'pipeline.log').read_text()[-2000:]}")
            time.sleep(0.5)

    try:
        def health() -> dict[str, str]:
            targets = api.get("/targets").json()["data"]["activeTargets"]
            return {t["labels"]["job"]: t["health"] for t in targets}

        wait_for("every role of tickflow run up", lambda: all(health().get(job) == "up" for job in expected_up), 60)
        states = health()
        assert {job for job, h in states.items() if h == "up"} == expected_up, states  # nothing else answers on these ports
        rules = api.get("/rules").json()["data"]["groups"]
        alerts = yaml.safe_load((PROMETHEUS_YML.parent / "alerts.yml").read_text())["groups"]
        assert sum(len(g["rules"]) for g in rules) == sum(len(g["rules"]) for g in alerts)

        from confluent_kafka import Producer

        bad = Producer({"bootstrap.servers": f"127.0.0.1:{broker_port}"})
        bad.produce(settings.kafka.topic_ticks, b"this is not avro", b"binance:BTC/USDT")
        assert bad.flush(10) == 0

        for name, title, expr in panel_queries():
            optional = OPTIONAL.get(name)
            if optional is not None and not query(optional):
                query(expr)  # parses
                continue
            wait_for(f"{name} / {title}: data for {expr}", lambda e=expr: query(e), 40)
    finally:
        _stop(pipeline)
        _stop(prom, signal.SIGTERM)
        api.close()
        log.close()
