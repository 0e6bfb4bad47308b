"""Alert rules (promtool check + unit tests) and the dashboard's queries against real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from controllers.metrics import DOMAIN_FAMILIES  # importing registers the operator's metrics
from modelfleet.devcluster.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "modelfleet" / "files" / "alerts.yaml"
ALERT_TESTS = ROOT / "monitoring" / "alerts_test.yaml"
DASHBOARD = ROOT / "charts" / "modelfleet" / "files" / "dashboard.json"

RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/modelfleet/modelfleet/blob/main/docs/runbooks.md#"

# The series the alerts may use besides the operator's own: Prometheus' scrape health, and
# the API server's count of webhook calls that got no answer (its `apiserver` scrape job).
PROMETHEUS_SERIES = {
    "up",
    "apiserver_admission_webhook_fail_open_count",
    "apiserver_admission_webhook_rejection_count",
}
# Dashboard variables, and the label each one filters on.
VARIABLES = {"kind": "kind", "namespace": "namespace", "name": "name"}
_SELECTOR = re.compile(r"\b([a-zA-Z_:][\w:]*)(\{[^}]*\})?(?=\s*(?:\[|\)|==|$|\s))")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_OPERATORS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([a-zA-Z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels and keywords removed)."""
    stripped = _STRING.sub("", expr)
    stripped = _MATCHERS.sub("", stripped)
    stripped = _RANGE.sub("", stripped)
    stripped = _GROUPING.sub("", stripped)
    return {n for n in _IDENTIFIER.findall(stripped) if n.lower() not in _OPERATORS}


def exported_metrics() -> set[str]:
    """Every series name the operator process exposes on /metrics."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panel_queries() -> Iterator[str]:
    panels = list(json.loads(DASHBOARD.read_text())["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        yield from (target["expr"] for target in panel.get("targets", []))


def dashboard_queries() -> Iterator[str]:
    """The panels' queries, and the metric each variable reads its values from."""
    yield from panel_queries()
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"unsupported variable query: {variable['query']}"
            yield match.group(1)


def test_metric_names_parses_promql() -> None:
    expr = (
        'sum by (kind, le) (rate(a_bucket{kind=~"$kind", x="rate(b)"}[$__rate_interval]))'
        " / on (kind) group_left c_total unless d > 0.5 and absent(e == 1)"
    )
    assert metric_names(expr) == {"a_bucket", "c_total", "d", "e"}


def test_rules_pass_promtool_check() -> None:
    result = subprocess.run(
        [find_tool("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = subprocess.run(
        [find_tool("promtool"), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ALERT_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires in a test"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} always fires"


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the second-level headings of docs/runbooks.md."""
    headings = re.findall(r"^## (.+)$", RUNBOOKS.read_text(), re.MULTILINE)
    return {
        re.sub(r"[^\w-]", "", heading.strip().lower().replace(" ", "-")) for heading in headings
    }


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert len(rule["annotations"]["runbook"].split()) >= 15, "the runbook says what to check"
    assert rule["annotations"]["summary"]
    url = rule["annotations"]["runbook_url"]
    assert url == RUNBOOK_URL + rule["alert"].lower(), url
    assert url.removeprefix(RUNBOOK_URL) in runbook_anchors(), f"docs/runbooks.md lacks {url}"


def test_every_runbook_belongs_to_an_alert() -> None:
    assert runbook_anchors() == {rule["alert"].lower() for rule in alert_rules()}


def test_alerts_use_exported_metrics() -> None:
    known = exported_metrics() | PROMETHEUS_SERIES
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} uses metrics nobody exports: {unknown}"


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    queries = list(dashboard_queries())
    assert len(queries) >= 8
    used: set[str] = set()
    for query in queries:
        names = metric_names(query)
        assert names, f"no metric found in {query!r}"
        assert names <= exported, f"{query!r} uses metrics the operator does not export"
        used |= names
    # The dashboard covers reconciles, errors, latency, resources and admission verdicts,
    # and what the resources report: pools' SLO, cost, replicas, migrations; FedJob rounds.
    assert {
        "modelfleet_reconcile_total",
        "modelfleet_reconcile_errors_total",
        "modelfleet_reconcile_duration_seconds_bucket",
        "modelfleet_resources",
        "modelfleet_admission_reviews_total",
        "modelfleet_modelpool_slo_attainment_ratio",
        "modelfleet_modelpool_cost_dollars_per_hour",
        "modelfleet_modelpool_ready_replicas",
        "modelfleet_modelpool_migrations_total",
        "modelfleet_fedjob_rounds_completed",
    } <= used


def resource_series() -> set[str]:
    """The series labelled with one resource's namespace and name."""
    lifecycle = {n for n in exported_metrics() if n.startswith("modelfleet_resource_")}
    return {family.name for family in DOMAIN_FAMILIES} | lifecycle


def kind_series() -> set[str]:
    """The operator's series labelled with a kind: all but the per-resource domain ones."""
    domain = {family.name for family in DOMAIN_FAMILIES}
    return {n for n in exported_metrics() if n.startswith("modelfleet_") and n not in domain}


def required_variables(metric: str) -> set[str]:
    """The dashboard variables a query must filter ``metric`` by: those of its labels."""
    required = set()
    if metric in resource_series():
        required |= {"namespace", "name"}
    if metric in kind_series():
        required.add("kind")
    return required


def test_dashboard_has_kind_namespace_and_name_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name, label in VARIABLES.items():
        query = variables[name]["query"]["query"]
        assert query.startswith("label_values(") and query.endswith(f", {label})"), query
        assert variables[name]["includeAll"] and variables[name]["multi"]
    # Narrowing the kind narrows the namespaces, and the namespace the names.
    assert "$kind" in variables["namespace"]["query"]["query"]
    assert "$namespace" in variables["name"]["query"]["query"]


def test_every_panel_query_filters_by_the_variables_of_its_series() -> None:
    per_resource = 0
    for query in panel_queries():
        for metric, selector in _SELECTOR.findall(query):
            if not metric.startswith("modelfleet_"):
                continue
            for variable in required_variables(metric):
                matcher = f'{VARIABLES[variable]}=~"${variable}"'
                assert matcher in selector, f"{metric} in {query!r} is not filtered by {matcher}"
            per_resource += "name" in required_variables(metric)
    assert per_resource >= 6, "the per-resource panels filter by namespace and name"
