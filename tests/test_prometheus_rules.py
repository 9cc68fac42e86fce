"""deploy/: Prometheus config and alert rules (checked and unit-tested by promtool), the Grafana dashboard.

Every metric a rule or a panel uses must be one a worker serves: the names are
compared with what :class:`streams.metrics.Metrics` registers, labels included.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "loopwatch.json"
# Labels Prometheus adds to every scraped series, and the bucket label of histograms.
SCRAPE_LABELS = {"instance", "job"}
# Sample names per metric type, as prometheus_client exposes them.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail loudly (never skip) when it is not installed."""
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (.ci/run does)", pytrace=False)
    return subprocess.run([path, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


@cache
def served() -> dict[str, set[str]]:
    """Every sample name a worker's /metrics can carry, with its label names."""
    names: dict[str, set[str]] = {"up": set()}  # up: Prometheus's own, per scrape target
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            # Label names are not public API; a labelled metric has no samples until it is used.
            labels = set(metric._labelnames)
            for suffix in SUFFIXES[str(metric._type)]:
                names[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def rule_exprs() -> dict[str, str]:
    """Alert name -> expression, for every rule of rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def panels() -> list[dict]:
    """Every panel of the dashboard (rows' nested panels included)."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found += [panel, *panel.get("panels", [])]
    return found


def panel_exprs() -> dict[str, str]:
    """``panel title/refId`` -> query, for every query of the dashboard."""
    return {f"{p['title']}/{t['refId']}": t["expr"] for p in panels() for t in p.get("targets", [])}


def as_promql(query: str) -> str:
    """A dashboard query with its Grafana variables replaced, so promtool can parse it."""
    return query.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$model", ".*")


def problems(expr: str) -> list[str]:
    """Metric names loopwatch does not serve, and label names none of the expression's metrics has."""
    names = set(re.findall(r"\b(loopwatch_[a-z0-9_]+|up)\b(?!\s*\()", expr))
    found = [f"{name} is not served on /metrics" for name in sorted(names - served().keys())]
    for name, matchers in re.findall(r"\b(loopwatch_[a-z0-9_]+|up)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in served().get(name, set()) | SCRAPE_LABELS:
                found.append(f"{name} has no label {label}")
    known = set().union(*(served().get(n, set()) for n in names)) | SCRAPE_LABELS
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        found += [
            f"no metric of it has label {label}" for label in re.findall(r"\w+", group) if label not in known
        ]
    return found


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    result = promtool("check", "config", "deploy/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "SUCCESS: 1 rule files found" in result.stdout
    )  # rule_files resolves to deploy/prometheus/rules.yml
    assert f"{len(rule_exprs())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    assert fired == set(rule_exprs())
    # Each test group also holds series that must not fire: the alerts are exactly the expected ones.
    for test in tests:
        assert len(test["input_series"]) >= 2, test["name"]


def test_the_rules_cover_loopwatchs_health() -> None:
    exprs = rule_exprs()
    assert {
        "LoopwatchWorkerDown",
        "LoopwatchConsumerLagGrowing",
        "LoopwatchDeadLetterRateHigh",
        "LoopwatchDeliveryFailures",
        "LoopwatchWindowsSkipped",
    } <= set(exprs)
    assert "loopwatch_events_in_total" in exprs["LoopwatchDeadLetterRateHigh"]  # a fraction of input


def test_every_metric_a_rule_or_a_panel_uses_is_served_with_those_labels() -> None:
    exprs = {**{f"rule {k}": v for k, v in rule_exprs().items()}, **panel_exprs()}
    assert len(exprs) > 20
    found = {where: problems(expr) for where, expr in exprs.items()}
    assert not {where: p for where, p in found.items() if p}


def test_the_check_finds_a_misspelt_metric_and_a_missing_label() -> None:
    assert problems("rate(loopwatch_events_in_totl[5m])") == [
        "loopwatch_events_in_totl is not served on /metrics"
    ]
    assert problems('sum by (verdict) (loopwatch_consumer_lag{model="x"})') == [
        "loopwatch_consumer_lag has no label model",
        "no metric of it has label verdict",
    ]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording rules' expressions: one rule per dashboard query.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": as_promql(q)} for n, q in enumerate(panel_exprs().values())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_dashboard_shows_what_an_operator_needs_from_its_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = " ".join(panel_exprs().values())
    for metric in (
        "loopwatch_events_in_total",
        "loopwatch_events_valid_total",
        "loopwatch_events_rejected_total",
        "loopwatch_consumer_lag",
        "loopwatch_detections_total",
        "loopwatch_model_detections_total",
        "loopwatch_alerts_firing",
        "loopwatch_actions_total",
        "loopwatch_delivery_failures_total",
        "loopwatch_processing_seconds_bucket",
        "loopwatch_stage_seconds_bucket",
        "loopwatch_windows_skipped_total",
    ):
        assert metric in used, metric
    assert "sum by (reason)" in used and "by (model, model_version, verdict)" in used
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in panels():
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and panel["description"], panel["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))


def test_the_rules_and_panels_name_the_job_prometheus_scrapes() -> None:
    [scrape] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    exprs = [*rule_exprs().values(), *panel_exprs().values()]
    jobs = {job for expr in exprs for job in re.findall(r'\bjob="([^"]*)"', expr)}
    assert jobs == {scrape["job_name"]}
