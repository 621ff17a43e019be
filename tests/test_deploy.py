"""docker-compose.yml and infra/k8s: valid documents whose tickflow commands, settings, ports,
consumer groups and topics are the ones the code has (no Docker engine or cluster runs here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml

from agents.registry import AGENTS
from schemas.registry import topic_of
from sinks.runner import SINKS, sink_group_id
from streams.cli import app
from streams.observability import ROLE_METRICS_PORTS
from streams.settings import GROUP_OF, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
K8S = ROOT / "infra" / "k8s"
CLI = typer.main.get_command(app)
GATEWAY_PORT = 8000


def check_command(argv: list[str]) -> None:
    """``argv`` parses as a tickflow command line: known command, known options, valid values.
    ``tickflow serve`` (the gateway) is skipped when this build does not have it yet."""
    assert argv[0] == "tickflow", argv
    name, *rest = argv[1:]
    command = CLI.commands.get(name)
    if command is None and name == "serve":
        pytest.skip("tickflow serve (the gateway) is not in this build")
    assert command is not None, f"{argv}: no such command; have {sorted(CLI.commands)}"
    command.make_context(name, list(rest))  # raises a usage error on unknown options or bad values


def test_the_command_check_rejects_what_the_cli_would() -> None:
    with pytest.raises(Exception, match="No such option"):
        check_command(["tickflow", "ingest", "--source", "synthetic", "--no-such-option"])
    with pytest.raises(AssertionError, match="no such command"):
        check_command(["tickflow", "wrker"])
    with pytest.raises(Exception, match="valid number"):
        check_command(["tickflow", "ingest", "--rate", "fast"])


def settings_fields() -> set[str]:
    return {name.upper() for name in GROUP_OF}


# -- docker-compose.yml


def tickflow_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "tickflow:dev"}


def test_compose_file_follows_the_compose_spec() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def test_compose_has_the_whole_stack() -> None:
    assert {"kafka", "schema-registry", "clickhouse", "timescaledb", "redis", "prometheus", "grafana"} <= set(COMPOSE["services"])
    assert set(tickflow_services()) == {"migrate", "worker", "ingest", "sink-clickhouse", "sink-postgres", "sink-redis", "gateway"}
    assert COMPOSE["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert not [name for name in COMPOSE["services"] if "zookeeper" in name]


@pytest.mark.parametrize("name", sorted(tickflow_services()))
def test_compose_tickflow_commands_are_real(name: str) -> None:
    check_command(tickflow_services()[name]["command"])


def test_compose_settings_ports_and_start_order() -> None:
    services = COMPOSE["services"]
    prometheus = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    dns = {j["dns_sd_configs"][0]["names"][0]: j["dns_sd_configs"][0]["port"] for j in prometheus["scrape_configs"] if "dns_sd_configs" in j}
    for name, svc in tickflow_services().items():
        assert set(svc["environment"]) <= settings_fields(), f"{name}: unknown settings {set(svc['environment']) - settings_fields()}"
        if name == "migrate":
            assert svc["restart"] == "no"
            continue
        port = GATEWAY_PORT if name == "gateway" else int(svc["environment"]["METRICS_PORT"])
        assert port == (GATEWAY_PORT if name == "gateway" else ROLE_METRICS_PORTS[name]), name
        assert dns[name] == port, f"Prometheus looks for {name} on {dns.get(name)}"
        assert f":{port}/metrics" in " ".join(svc["healthcheck"]["test"]), name
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
        if name != "migrate":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
    assert COMPOSE["services"]["worker"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_compose_mounts_what_exists() -> None:
    for name in ("prometheus", "grafana"):
        for volume in COMPOSE["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), f"{name} mounts missing {source}"
    assert list((ROOT / "infra" / "grafana" / "dashboards").glob("*.json"))


# -- infra/k8s


def k8s_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    assert {p.name for p in K8S.glob("*.yaml")} == {"kustomization.yaml", *kustomization["resources"]}
    return docs


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"] if doc["kind"] in ("Deployment", "Job") else []


def test_k8s_manifests_parse_and_are_complete() -> None:
    docs = k8s_documents()
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"worker", "ingest", "sink-clickhouse", "sink-postgres", "sink-redis", "gateway"}
    for name, dep in deployments.items():
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(), name


@pytest.mark.parametrize("doc", [d for d in k8s_documents() if containers(d)], ids=lambda d: d["metadata"]["name"])
def test_k8s_commands_settings_and_ports(doc: dict[str, Any]) -> None:
    config = next(d for d in k8s_documents() if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= settings_fields()
    for container in containers(doc):
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert set(env) <= settings_fields()
        name = doc["metadata"]["name"]
        if name in ROLE_METRICS_PORTS:
            assert int(env["METRICS_PORT"]) == ROLE_METRICS_PORTS[name]
            assert doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == env["METRICS_PORT"]
        check_command(container["command"])


def test_keda_scales_on_the_real_consumer_groups_and_topics() -> None:
    docs = k8s_documents()
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    settings = Settings(app_id=config["APP_ID"])
    groups = {f"{settings.kafka.app_id}-{spec.name}": {topic_of(settings, i) for i in spec.inputs} for spec in AGENTS}
    for sink in SINKS:
        groups[sink_group_id(settings, sink)] = set(SINKS[sink].topics_for(settings))
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert {d["spec"]["scaleTargetRef"]["name"] for d in scaled} >= {"worker", "sink-clickhouse", "sink-postgres", "sink-redis"}
    for obj in scaled:
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        kafka = [t for t in obj["spec"]["triggers"] if t["type"] == "kafka"]
        for trigger in kafka:
            meta = trigger["metadata"]
            assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP"]
            assert meta["consumerGroup"] in groups, meta
            assert meta["topic"] in groups[meta["consumerGroup"]], meta
        if kafka:
            assert obj["spec"]["maxReplicaCount"] <= int(config["TICKS_PARTITIONS"])
    worker_groups = {t["metadata"]["consumerGroup"] for d in scaled if d["metadata"]["name"] == "worker" for t in d["spec"]["triggers"]}
    # An agent the settings leave off (signals without STRATEGY_FILE) has no group to scale on.
    assert worker_groups == {f"{settings.kafka.app_id}-{spec.name}" for spec in AGENTS if spec.enabled is None or spec.enabled(settings)}

