"""The Grafana dashboard and the Prometheus alerts ask only for metrics the worker exports."""

import json
import re
from pathlib import Path

import yaml

from streams.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def _families() -> set[str]:
    return {family.name for family in Metrics().registry.collect()}


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
