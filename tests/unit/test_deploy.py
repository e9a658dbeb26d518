"""The Grafana dashboard and the Prometheus alerts ask only for metrics the worker exports."""

import json
import re
from pathlib import Path

import yaml

from streams.metrics import RECORD_AGENTS, WORKER_STATES, DeliverMetrics, Metrics

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


def _label_names() -> dict[str, set[str]]:
    """family -> its label names (``le`` for histograms), of every metric the worker and deliver export."""
    names: dict[str, set[str]] = {}
    for metrics in (Metrics(), DeliverMetrics()):
        for collector in set(metrics.registry._collector_to_names):
            labels = set(getattr(collector, "_labelnames", ()))
            for family in collector.collect():
                names[family.name] = labels | ({"le"} if family.type == "histogram" else set())
    return names


#: The values a fixed label of a metric takes, where the deploy files name one.
LABEL_VALUES = {
    ("mailpulse_events", "outcome"): {"processed", "duplicate", "dead_letter"},
    ("mailpulse_worker_state", "state"): set(WORKER_STATES),
    ("mailpulse_record_seconds", "agent"): set(RECORD_AGENTS),
    ("mailpulse_deliveries", "outcome"): {"sent", "failed", "deferred", "held", "duplicate", "suppressed",
                                          "cancelled", "no_address"},
}


def _deploy_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/mailpulse.json").read_text())
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return ([target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
            + [rule["expr"] for group in alerts["groups"] for rule in group["rules"]])


def test_the_labels_the_deploy_files_select_and_group_by_are_those_the_metrics_have() -> None:
    """A label misspelt in a matcher or a ``by`` selects nothing (an alert that never fires, an empty
    panel) where a metric name misspelt at least fails the test above."""
    known = _label_names()
    scrape = {"job", "instance"}  # added by Prometheus
    wrong = []
    for expr in _deploy_expressions():
        families = {_family_of(name) for name in re.findall(r"\b(?:mailpulse|process)_[a-z_]+", expr)}
        for name, matchers in re.findall(r"\b((?:mailpulse|process)_[a-z_]+)\{([^}]*)\}", expr):
            family = _family_of(name)
            for label, op, value in re.findall(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"', matchers):
                if label not in known[family] | scrape:
                    wrong.append((expr, label))
                allowed = LABEL_VALUES.get((family, label))
                if allowed is not None and op in ("=", "=~"):
                    values = set(value.split("|")) if op == "=~" else {value}
                    wrong += [(expr, f"{label}={v}") for v in values - allowed]
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",") if label.strip()}
            have = set().union(*(known[family] for family in families)) | scrape
            wrong += [(expr, label) for label in labels - have]
    assert not wrong


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
