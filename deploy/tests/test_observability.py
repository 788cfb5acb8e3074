"""The alert rules and the Grafana dashboard the chart ships (helm/nomnom/files/), checked
with the real tools: promtool checks the rules and runs their unit tests (series that fire
each alert and series that must not, deploy/tests/prometheus/rules_test.yaml); the chart
renders them, off by default, into a PrometheusRule and a ConfigMap for Grafana's sidecar;
and every metric they name is one nats-api or the worker exports. That each expression
returns data from the real processes is system-tests/tests/observability.rs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import CHART, ROOT
from test_helm_chart import by_kind, chart, helm, manifests, merged, render  # noqa: F401 (chart: a fixture)

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULE_TESTS = ROOT / "deploy" / "tests" / "prometheus" / "rules_test.yaml"
ENABLED = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "monitoring"}},
                       "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "nomnom"}}}}
ALERTS = {"NomnomConsumerLagGrowing", "NomnomDeadLetters", "NomnomApiUnavailable", "NomnomWorkerNotReady",
          "NomnomDatabaseDown"}
METRIC_MACRO = re.compile(r'(?:counter|gauge|histogram)!\(\s*"([a-z_]+)"')
METRIC_NAME = re.compile(r"\b((?:ingest|worker|pipeline)_[a-z_]+)\b")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/install-deps.sh installs Debian's prometheus package (as root)"
    return found


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def exported_metrics() -> set[str]:
    """Every metric name nats-api and the runtime (the worker) record."""
    names: set[str] = set()
    for file in [*(ROOT / "nats-api/src").rglob("*.rs"), *(ROOT / "runtime/src").rglob("*.rs")]:
        names |= set(METRIC_MACRO.findall(file.read_text()))
    # Counters registered at zero by name in a loop (runtime/src/worker/health.rs).
    health = (ROOT / "runtime/src/worker/health.rs").read_text()
    names |= set(re.findall(r'"(worker_[a-z_]+_total)"', health))
    return names


def test_promtool_checks_the_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


def test_every_alert_has_firing_and_quiet_unit_tests():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    assert {r["alert"] for r in rules()} == ALERTS
    for alert in ALERTS:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"{alert}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{alert}: no case where it stays quiet"


def test_promtool_runs_the_rule_unit_tests():
    result = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_has_a_runbook_in_operations_md():
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = {m.lower() for m in re.findall(r"^#+ .*?`?(Nomnom[A-Za-z]+)`?\s*$", operations, re.M)}
    for rule in rules():
        name = rule["alert"]
        assert name.lower() in headings, f"docs/operations.md has no runbook heading for {name}"
        assert rule["annotations"]["runbook_url"].endswith(f"docs/operations.md#{name.lower()}")


@pytest.mark.parametrize("expression", [r["expr"] for r in rules()] + dashboard_expressions())
def test_expressions_name_only_exported_metrics(expression):
    exported = exported_metrics()
    named = {re.sub(r"_(bucket|sum|count)$", "", m) for m in METRIC_NAME.findall(expression)}
    assert named, expression
    assert named <= exported, f"{sorted(named - exported)} are not exported by nats-api or the worker"


def test_the_dashboard_covers_what_docs_promise():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"] if p["type"] != "row"}
    assert {"Ingest rate by outcome", "HTTP answers by status", "Publish latency", "Stream depth", "Consumer lag",
            "Rows persisted per second, by table", "Batch latency", "Naks and redeliveries", "Dead letters",
            "Skipped duplicates and stale changes", "Database and readiness"} <= titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]), "panel ids are unique"


def test_rules_and_dashboard_are_off_by_default(chart):
    documents = manifests(render(chart))
    assert not by_kind(documents, "PrometheusRule")
    assert not [d for d in documents if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})]


def test_enabled_they_render_the_shipped_files(chart):
    documents = manifests(render(chart, ENABLED))
    (rule,) = by_kind(documents, "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "monitoring"
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "the rule file, unchanged"
    (dashboard,) = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "nomnom"}
    (text,) = dashboard["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


def test_alert_thresholds_are_chart_values(chart, tmp_path):
    """metrics.prometheusRule.alerts changes each alert's `for` and the lag threshold, in the
    expression and in the text an operator reads, and the result is still a rule file that
    promtool accepts."""
    tuned = {"NomnomConsumerLagGrowing": {"for": "30m", "pendingAbove": 50000},
             "NomnomDatabaseDown": {"for": "30s"}}
    values = {"metrics": {"prometheusRule": {"enabled": True, "alerts": tuned}}}
    (rule,) = by_kind(manifests(render(chart, values)), "PrometheusRule").values()
    rendered = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    shipped = {r["alert"]: r for r in rules()}
    lag = rendered["NomnomConsumerLagGrowing"]
    assert lag["for"] == "30m"
    assert "> 50000" in lag["expr"] and "> 1000" not in lag["expr"]
    assert "over 50000 undelivered messages" in lag["annotations"]["description"]
    assert lag["annotations"]["description"].endswith("for 30m.")
    database = rendered["NomnomDatabaseDown"]
    assert database["for"] == "30s" and "no database for 30s;" in database["annotations"]["description"]
    for untouched in ("NomnomDeadLetters", "NomnomApiUnavailable", "NomnomWorkerNotReady"):
        assert rendered[untouched] == shipped[untouched]
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alerts, complaint", [
    ({"NomnomConsumerLagGrowing": {"for": "fifteen minutes"}}, "fifteen minutes"),
    ({"NomnomConsumerLagGrowing": {"pendingAbove": -1}}, "-1"),
    ({"NomnomDatabaseDown": {"pendingAbove": 10}}, "pendingAbove"),
    ({"NomnomLagGrowing": {"for": "5m"}}, "NomnomLagGrowing"),
])
def test_alert_values_are_checked_by_the_schema(chart, alerts, complaint):
    with pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema(merged({"metrics": {"prometheusRule": {"enabled": True, "alerts": alerts}}}))
    assert complaint in str(error.value)
