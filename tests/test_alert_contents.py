"""Alerts carry the numbers a paged person needs and the rule's runbook, in every payload and log line."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retrain_trigger.alerts import alert_value, describe_value, firing_counts, transition_line
from retrain_trigger.notify import alertmanager_payload, pagerduty_payload, slack_payload, webhook_payload
from retrain_trigger.pipeline import Decider
from retrain_trigger.stable import StableVersionMarked
from schemas.events import Detection, Segment
from streams.metrics import OTHER, LabelBudget, Metrics, metric_total
from tests.test_decide_pipeline import policy

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUNBOOK = "https://runbooks.example.com/bad-replies"


def feedback_detection(minute: int, verdict: str, current_rate: float, version: str = "v2") -> Detection:
    """Negative feedback as quality.negative_feedback.v1 reports it."""
    start = T0 + timedelta(minutes=minute)
    return Detection(
        detection_id=f"neg-{version}-{minute}",
        detector_id="quality.negative_feedback.v1",
        detector_version="v1",
        config={"alpha": 0.01, "min_effect_size": 0.05},
        segment=Segment(model="chat", model_version=version, app="support"),
        window_start=start,
        window_end=start + timedelta(minutes=1),
        reference_size=400,
        current_size=102,
        statistic=27.1,
        p_value=2e-9 if verdict == "drift" else 0.4,
        threshold=0.01,
        effect_size=current_rate - 0.2,
        verdict=verdict,
        measurements={
            "reference_rate": 0.2,
            "current_rate": current_rate,
            "reference_samples": 400.0,
            "current_samples": 62.0,
        },
        reference="stable:chat",
        detected_at=start + timedelta(minutes=1),
    )


def firing_and_resolved() -> tuple[Any, Any]:
    """The decisions of one bad window (fires) and two clear ones (resolve) under the test policy."""
    decider = Decider(policy())
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    fired = decider.decide(feedback_detection(0, "drift", 0.871), T0 + timedelta(minutes=1))
    decider.decide(feedback_detection(1, "ok", 0.21), T0 + timedelta(minutes=2))
    resolved = decider.decide(feedback_detection(2, "ok", 0.19), T0 + timedelta(minutes=3))
    return fired, resolved


def test_a_firing_alert_carries_the_numbers_and_the_runbook() -> None:
    fired, _ = firing_and_resolved()
    [alert] = fired.alerts
    assert alert.status == "firing" and alert.runbook_url == RUNBOOK
    [value] = alert.values
    assert value.detection_id == "neg-v2-0" and value.detector_id == "quality.negative_feedback.v1"
    assert (value.measurement, value.reference_value, value.current_value) == ("current_rate", 0.2, 0.871)
    assert value.effect_size == pytest.approx(0.671) and value.p_value == 2e-9 and value.threshold == 0.01
    assert (value.reference_size, value.current_size, value.verdict) == (400, 102, "drift")
    assert (value.window_start, value.window_end) == (T0, T0 + timedelta(minutes=1))


def test_the_resolved_alert_still_says_what_fired_it() -> None:
    _, resolved = firing_and_resolved()
    [alert] = resolved.alerts
    assert alert.status == "resolved" and alert.runbook_url == RUNBOOK
    assert [v.current_value for v in alert.values] == [0.871]


def test_every_payload_has_the_numbers_or_the_runbook_link_where_it_has_a_place() -> None:
    fired, _ = firing_and_resolved()
    [page] = fired.notifications
    [alert] = page.alerts
    notes = page.annotations[alert.fingerprint]
    assert notes["runbook_url"] == RUNBOOK
    assert notes["description"].startswith(
        "quality.negative_feedback.v1 current_rate 0.2 -> 0.871, effect 0.671"
    )
    manager = alertmanager_payload(page, "bridge")
    assert manager["alerts"][0]["annotations"]["runbook_url"] == RUNBOOK
    assert manager["commonAnnotations"]["runbook_url"] == RUNBOOK
    assert f"<{RUNBOOK}|runbook>" in slack_payload(page)["blocks"][1]["text"]["text"]
    assert pagerduty_payload(page, "key")["links"] == [{"href": RUNBOOK, "text": "runbook"}]
    body = webhook_payload(page)
    assert body["alerts"][0]["runbook_url"] == RUNBOOK
    assert body["alerts"][0]["values"][0]["current_value"] == 0.871


def test_the_transition_line_names_the_alert_and_its_numbers() -> None:
    fired, resolved = firing_and_resolved()
    [alert] = fired.alerts
    line = transition_line(alert)
    assert line.startswith(f"alert firing {alert.fingerprint} chat/v2 critical: bad-replies:")
    assert "current_rate 0.2 -> 0.871, effect 0.671, p 2e-09, n 400/102" in line
    assert "window 2026-03-01T12:00:00+00:00..2026-03-01T12:01:00+00:00 drift" in line
    assert line.endswith(f"| runbook {RUNBOOK}") and "\n" not in line
    assert transition_line(resolved.alerts[0]).startswith(f"alert resolved {alert.fingerprint} chat/v2")


def _detection(detector: str, measurements: dict[str, float], statistic: float | None = None) -> Detection:
    return feedback_detection(0, "drift", 0.5).model_copy(
        update={"detector_id": detector, "measurements": measurements, "statistic": statistic}
    )


@pytest.mark.parametrize(
    "detector,measurements,statistic,expected",
    [
        (
            "quality.error_rate.v1",
            {"reference_rate": 0.01, "current_rate": 0.09},
            None,
            ("current_rate", 0.01, 0.09),
        ),
        (
            "toxicity.detoxify.v1",
            {
                "rate.toxicity": 0.12,
                "baseline_rate.toxicity": 0.02,
                "rate.insult": 0.05,
                "worst.toxicity": 1.0,
            },
            0.12,
            ("rate.toxicity", 0.02, 0.12),
        ),
        (
            "quality.latency.v1",
            {
                "p50.observed_ms": 300,
                "p50.slo_ms": 800,
                "p95.observed_ms": 2900,
                "p95.slo_ms": 2000,
                "decided_by.p95": 1.0,
            },
            2900,
            ("p95.observed_ms", 2000, 2900),
        ),
        (
            "drift.flag_rate.v1",
            {"rate_reference": 0.01, "rate_current": 0.2},
            9.1,
            ("rate_current", 0.01, 0.2),
        ),
        ("quality.cost.v1", {"current_mean": 0.031, "slo": 0.02}, 0.031, ("current_mean", 0.02, 0.031)),
        ("drift.ks.v1", {"p_value_adjusted": 0.003}, 0.41, (None, None, 0.41)),
    ],
    ids=["rate", "worst-label", "deciding-check", "flag-rate", "cost-slo", "statistic-only"],
)
def test_the_judged_value_of_each_detector_family(
    detector: str, measurements: dict[str, float], statistic: float | None, expected: tuple[Any, ...]
) -> None:
    value = alert_value(_detection(detector, measurements, statistic))
    assert (value.measurement, value.reference_value, value.current_value) == expected


def test_a_value_held_to_an_slo_reads_against_it() -> None:
    latency = {"p95.observed_ms": 3504.9, "p95.slo_ms": 2000, "decided_by.p95": 1.0}
    value = alert_value(_detection("quality.latency.v1", latency, 3504.9))
    assert value.reference_is_slo
    line = describe_value(value)
    assert "quality.latency.v1 p95.observed_ms 3,505 vs SLO 2,000, effect" in line
    assert f", n {value.current_size}, window" in line and "->" not in line
    rate = alert_value(_detection("quality.error_rate.v1", {"reference_rate": 0.01, "current_rate": 0.09}))
    assert not rate.reference_is_slo and "current_rate 0.01 -> 0.09" in describe_value(rate)


def test_the_adjusted_p_value_is_the_one_reported() -> None:
    assert alert_value(_detection("drift.ks.v1", {"p_value_adjusted": 0.003}, 0.4)).p_value == 0.003


def test_firing_alerts_are_counted_by_severity_model_and_rule() -> None:
    decider = Decider(policy())
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    decider.decide(feedback_detection(0, "drift", 0.871), T0 + timedelta(minutes=1))
    books = [ms.book for ms in decider.state.models.values()]
    assert firing_counts(books) == {("critical", "chat", "bad-replies"): 1}


def test_label_budget_keeps_the_latest_versions_and_folds_extra_models() -> None:
    metrics = Metrics()
    metrics._budget = LabelBudget(max_models=2, max_versions=2, max_detectors=1)
    for version in ("v1", "v2", "v3"):
        metrics.decided("chat", version, "quality.negative_feedback.v1", "ok")
    metrics.decided("chat", "v3", "toxicity.profanity.v1", "drift")
    metrics.decided("search", "v1", "drift.ks.v1", "ok")
    metrics.decided("third", "v9", "drift.ks.v1", "ok")
    text = metrics.render().decode()
    name = "loopwatch_model_detections_total"
    # v1 was the least recently seen when v3 came: its series is gone, v2 and v3 keep theirs.
    assert metric_total(text, name, model="chat", model_version="v1") == 0
    assert metric_total(text, name, model="chat", model_version="v2") == 1
    assert metric_total(text, name, model="chat", model_version="v3", detector=OTHER, verdict="drift") == 1
    assert metric_total(text, name, model=OTHER, model_version=OTHER) == 1
    assert metric_total(text, "loopwatch_detections_decided_total") == 6  # the old total still counts all


def test_the_firing_gauge_goes_back_to_zero() -> None:
    metrics = Metrics()
    metrics.set_alerts_firing(Counter({("critical", "chat", "x"): 2}))
    assert metric_total(metrics.render().decode(), "loopwatch_alerts_firing", severity="critical") == 2
    metrics.set_alerts_firing(firing_counts([]))
    text = metrics.render().decode()
    assert metric_total(text, "loopwatch_alerts_firing", model="chat") == 0
    assert 'loopwatch_alerts_firing{alertname="x",model="chat",severity="critical"} 0.0' in text
