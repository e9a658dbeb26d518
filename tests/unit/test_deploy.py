"""The Grafana dashboard and the Prometheus alerts ask only for metrics the worker exports."""

import json
import re
from pathlib import Path

import yaml

from streams.metrics import DeliverMetrics, Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def _families() -> set[str]:
    return {family.name for metrics in (Metrics(), DeliverMetrics()) for family in metrics.registry.collect()}


def _family_of(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def _named(expressions: list[str]) -> set[str]:
    return {_family_of(name) for expr in expressions for name in re.findall(r"\b(?:mailpulse|process)_[a-z_]+", expr)}


def test_dashboard_panels_query_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/mailpulse.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    named = _named(exprs)
    assert "mailpulse_commit_seconds" in named
    assert named <= _families()


def test_alerts_query_exported_metrics() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    exprs = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    assert exprs
    assert _named(exprs) <= _families()


ROOT = DEPLOY.parent


def test_compose_parses_and_refers_to_existing_files_and_the_workers_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    services = compose["services"]
    worker = services["mailpulse"]
    env = worker["environment"]
    port = env["MAILPULSE_METRICS_PORT"]
    assert env["MAILPULSE_METRICS_HOST"] == "0.0.0.0"  # reachable by Prometheus in another container
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert (ROOT / worker["build"] / "Dockerfile").exists()
    assert worker["restart"] == "on-failure"  # exit 70 (an agent failed): the restart reads the batch again
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), volume
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["mailpulse"]["dns_sd_configs"][0]["port"] == int(port)
    deliver = services["deliver"]  # started with --profile deliver
    assert deliver["profiles"] == ["deliver"] and deliver["command"][0] == "deliver"
    deliver_port = deliver["environment"]["MAILPULSE_DELIVER_PORT"]
    assert deliver["environment"]["MAILPULSE_METRICS_HOST"] == "0.0.0.0"
    [deliver_sd] = jobs["mailpulse-deliver"]["dns_sd_configs"]
    assert deliver_sd == {"names": ["deliver"], "type": "A", "port": int(deliver_port)}
    assert f"127.0.0.1:{deliver_port}/healthz" in " ".join(deliver["healthcheck"]["test"])
    assert all((DEPLOY / "prometheus" / name).exists() for name in prometheus["rule_files"])


def test_kubernetes_manifests_parse_and_probe_health_and_readiness_on_the_metrics_port() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes/kustomization.yaml").read_text())
    docs = {}
    for name in kustomization["resources"]:
        doc = yaml.safe_load((DEPLOY / "kubernetes" / name).read_text())
        docs[doc["kind"]] = doc
    [container] = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    [port] = container["ports"]
    assert int(env["MAILPULSE_METRICS_PORT"]) == port["containerPort"]
    assert env["MAILPULSE_METRICS_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    annotations = docs["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert env["MAILPULSE_CONFIG"].startswith(container["volumeMounts"][1]["mountPath"])
    assert "config.yaml" in docs["ConfigMap"]["data"]


def test_the_kubernetes_config_is_the_built_in_defaults() -> None:
    """What the config map's comment says: a user who edits it starts from what runs without it."""
    from streams.domain.config import PipelineConfig

    configmap = yaml.safe_load((DEPLOY / "kubernetes/configmap.yaml").read_text())
    given = yaml.safe_load(configmap["data"]["config.yaml"])
    assert PipelineConfig.model_validate(given) == PipelineConfig()
