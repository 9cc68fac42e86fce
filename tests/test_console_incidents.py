"""The Incidents page says what followed a rollback and what the policy's retrain and rollback rules did.

Issue 12's trial 12e: a canary kept serving 100 s after its rollback request while the page said only
"v2 -> v1 verified"; the user's run requested no retrain, unlike the demo, and nothing said why. Each
history here is a few rows written in the test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import write_deltalake
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.history import PARTITION_BY, SCHEMAS
from retrain_trigger.actions import CountedWindow, RollbackOutcome, WindowSpan
from retrain_trigger.alerts import alert_labels
from retrain_trigger.policy import load_policy, parse_policy
from schemas.events import Segment
from services.console import build_console, create_app
from services.console.policy_explain import policy_report
from services.console.reader import HistoryReader
from services.console.views import incidents_view, resolve_range

MODEL = "hh-concierge"
START = datetime(2026, 12, 2, 0, 41, 40, tzinfo=UTC)
W = timedelta(seconds=20)
REQUEST = "lw-rollback-5bbad6ad"
REQUEST_END = START + 4 * W  # the request was made on the window ending 00:43:00


def at(n: int) -> datetime:
    """The start of window ``n`` (20 s windows from 00:41:40)."""
    return START + n * W


def _segment(version: str, model: str = MODEL) -> dict[str, Any]:
    return {
        "model": model,
        "model_version": version,
        "app": "trial12e",
        "route": "chat",
        "tenant": None,
        "segment": f"{model}|{version}|trial12e|chat|",
    }


def window(version: str, n: int, kind: str = "inference", model: str = MODEL) -> dict[str, Any]:
    """A ``windows`` row of window ``n``."""
    return {
        "day": START.date(),
        **_segment(version, model),
        "window_start": at(n),
        "window_end": at(n + 1),
        "events": 60 if kind == "inference" else None,
        "feedback_events": 48 if kind == "feedback" else None,
        "sample_size": 60,
        "kind": kind,
        "revision": 0,
        "outcome": "judged",
    }


def detection(
    version: str,
    n: int,
    detector: str,
    verdict: str = "ok",
    size: int = 60,
    p: float = 0.4,
    effect: float = 0.3,
) -> dict[str, Any]:
    """A ``detections`` row of window ``n``."""
    return {
        "day": START.date(),
        **_segment(version),
        "window_start": at(n),
        "window_end": at(n + 1),
        "detection_id": f"{version}-{detector}-{n}",
        "detector_id": detector,
        "detector_version": "1",
        "config_id": "c0ffee",
        "verdict": verdict,
        "p_value": p,
        "effect_size": effect,
        "reference_size": 60,
        "current_size": size,
        "measurements": "{}",
        "reference": "stable",
        "revision": 0,
        "judged": True,
    }


def alert(rule: str, action: str, detector: str, version: str, status: str, when: datetime) -> dict[str, Any]:
    """An ``alerts`` row as the decide stage labels it."""
    from retrain_trigger.policy import Gates, Match, Rule

    made = Rule(name=rule, match=Match(detectors=[detector]), action=action, gates=Gates())
    labels = alert_labels(
        made, detector, Segment(model=MODEL, model_version=version, app="trial12e", route="chat")
    )
    return {
        "day": when.date(),
        "model": MODEL,
        "model_version": version,
        "fingerprint": f"fp-{rule}-{detector}-{version}",
        "status": status,
        "severity": "critical",
        "summary": f"{rule} on {version}",
        "labels": json.dumps(labels),
        "detections": "[]",
        "starts_at": when,
        "ends_at": when if status == "resolved" else None,
        "changed_at": when,
    }


def action(event_id: str, kind: str, when: datetime, **data: Any) -> dict[str, Any]:
    """An ``actions`` row: a CloudEvent and its data."""
    return {
        "day": when.date(),
        "model": data.get("model", MODEL),
        "id": event_id,
        "type": f"io.loopwatch.{kind}",
        "source": "/loopwatch/retrain-trigger",
        "subject": data.get("model", MODEL),
        "time": when,
        "topic": "loopwatch.rollback-requests.v1",
        "data": json.dumps({"model": MODEL, **data}, default=str),
    }


def write(root: Path, schemas: Mapping[str, pa.Schema] | None = None, **tables: list[dict[str, Any]]) -> str:
    """The rows as history tables under ``root`` (``schemas``: other columns than today's)."""
    for name, rows in tables.items():
        schema = (schemas or {}).get(name, SCHEMAS[name])
        write_deltalake(
            str(root / name), pa.Table.from_pylist(rows, schema=schema), partition_by=PARTITION_BY[name]
        )
    return str(root)


def rollback_request(event_id: str = REQUEST, window_end: datetime = REQUEST_END) -> dict[str, Any]:
    """The rollback request of rule bad-replies, decided on the window ending ``window_end``."""
    return action(
        event_id,
        "rollback.requested",
        window_end,
        rule="bad-replies",
        policy="default",
        from_version="v2",
        target_version="v1",
        window_end=window_end.isoformat(),
        reason="Replies of this model version got worse",
    )


def test_a_rollback_request_says_how_long_the_canary_kept_serving_and_which_windows_were_counted(
    tmp_path: Path,
) -> None:
    """The user's run: v2 served 00:43:00-00:45:00 after the request on 00:43:00; v1 counted from 00:45:00."""
    windows = [window("v1", n) for n in range(12)] + [window("v2", n) for n in range(3, 10)]
    windows += [window("v2", 11, kind="feedback")]  # late ratings of old replies: not serving
    # The decide stage's own outcome model: the page reads the fields it names.
    outcome = RollbackOutcome(
        rollback_id=REQUEST,
        model=MODEL,
        from_version="v2",
        target_version="v1",
        verified=True,
        reason="target v1 is better on quality.negative_feedback.v1: 0.102 (n=49) vs 0.8 (n=40)",
        counted_windows=[CountedWindow(window_start=at(10), window_end=at(11), samples={"q": 49})],
        counted_window_count=1,
        rolled_back_last_window=WindowSpan(window_start=at(9), window_end=at(10)),
        rolled_back_windows_after_request=6,
    )
    verified = action(f"{REQUEST}.verified", "rollback.verified", at(11), **outcome.model_dump(mode="json"))
    root = write(tmp_path, windows=windows, actions=[rollback_request(), verified])
    with TestClient(create_app(build_console(Settings(), history=root, datasets=str(tmp_path)))) as client:
        [request] = [a for a in client.get("/api/incidents").json()["actions"] if a["id"] == REQUEST]
        after = request["after"]
        assert (after["served_windows"], after["served_first_start"], after["served_last_end"]) == (
            6,
            "2026-12-02T00:43:00Z",
            "2026-12-02T00:45:00Z",
        )
        assert after["lines"] == [
            # Issue 12 trial 12f: one span (2 min, six 20 s windows), not "at least 100 s" beside it.
            "v2 kept serving 6 windows (2 min 0 s of window time) after the request: 00:43:00-00:45:00",
            "verified on 1 window of v1 00:45:00 → 00:45:20, after v2's last window (ended 00:45:00)",
        ]
        assert after["counted"]["windows"] == 1
        html = client.get("/incidents").text
        assert "v2 kept serving 6 windows (2 min 0 s of window time) after the request" in html


def test_a_canary_that_stopped_at_once_says_so_and_an_older_verification_quotes_its_numbers(
    tmp_path: Path,
) -> None:
    """A verification published before it named its windows: the line quotes the reason's numbers."""
    windows = [window("v2", n) for n in range(4)] + [window("v1", n) for n in range(6)]
    verified = action(
        f"{REQUEST}.verified",
        "rollback.verified",
        at(6),
        verified=True,
        from_version="v2",
        target_version="v1",
        reason="target v1 is better on quality.negative_feedback.v1: 0.1 (n=57) vs 1 (n=120)",
    )
    root = write(tmp_path, windows=windows, actions=[rollback_request(), verified])
    history = HistoryReader(root)
    view = incidents_view(history, resolve_range(history, None, 7, ("actions",)))
    [request] = [a for a in view.actions if a.id == REQUEST]
    assert request.after is not None and request.after.counted is None
    assert request.after.lines == [
        "v2 served no window after the request (none: it stopped at once)",
        "verified on v1's windows after the request: 0.1 (n=57) vs 1 (n=120)",
    ]


#: A policy like the default one, its gates small enough for a few rows.
POLICY = """
name: trial
cooldown: 1h
rules:
  - name: bad-replies
    match: {detectors: [quality.negative_feedback.v1], verdicts: [drift]}
    action: rollback
    gates: {min_samples: 30, for_windows: 1}
  - name: input-drift
    match: {detectors: ["drift.*"], verdicts: [drift]}
    action: retrain
    gates: {min_samples: 50, min_effect_size: 0.1, for_windows: 3}
  - name: serving-errors
    match: {detectors: [quality.error_rate.v1]}
    action: alert
inhibit:
  - source: {action: rollback}
    target: {action: retrain}
    equal: [model]
"""
TEXT = "drift.text_length.v1"


def _report(
    tmp_path: Path,
    detections: list[dict[str, Any]],
    alerts: list[dict[str, Any]] | None = None,
    actions: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    tables: dict[str, list[dict[str, Any]]] = {"detections": detections}
    if alerts:
        tables["alerts"] = alerts
    if actions:
        tables["actions"] = actions
    history = HistoryReader(write(tmp_path, None, **tables))
    view = incidents_view(
        history, resolve_range(history, None, 7, ("detections",)), parse_policy(POLICY), "p.yaml"
    )
    assert view.policy is not None and view.policy.file == "p.yaml"
    assert [r.rule for r in view.policy.rules] == ["bad-replies", "input-drift"]  # not the alert-only rule
    return {r.rule: f"{r.state}: {r.why}" for r in view.policy.rules}


def _drift(version: str, ns: range, **kw: Any) -> list[dict[str, Any]]:
    return [detection(version, n, TEXT, "drift", **kw) for n in ns]


@pytest.mark.parametrize(
    ("detections", "expected"),
    [
        (
            [detection("v2", 0, "quality.negative_feedback.v1")],
            "not fired: no detection of drift.* in the range",
        ),
        (
            [detection("v2", n, TEXT, "warning" if n == 1 else "ok") for n in range(3)],
            "not fired: 3 windows (3 detections) judged by drift.*, none drift",
        ),
        (
            _drift("v2", range(3), size=40),
            "not fired: 3 drift windows of drift.*, none met the gates: min_samples 50: the largest had 40",
        ),
        (
            _drift("v2", range(2), effect=0.05) + _drift("v2", range(2, 3), size=20),
            "not fired: 3 drift windows of drift.*, none met the gates:"
            " min_samples 50: 1 of them had at most 20;"
            " min_effect_size 0.1: 2 of them had |effect| at most 0.05",
        ),
        (
            [*_drift("v2", range(0, 4, 2)), detection("v2", 1, TEXT, "ok"), detection("v2", 3, TEXT, "ok")],
            "not fired: 2 breaching windows (drift.text_length.v1 on 2 windows of v2, from 00:41:40),"
            " at most 1 in a row: for_windows 3",
        ),
    ],
    ids=["no-detection", "none-drift", "min-samples", "effect-and-samples", "not-in-a-row"],
)
def test_a_rule_that_did_not_fire_says_why_from_the_detections(
    tmp_path: Path, detections: list[dict[str, Any]], expected: str
) -> None:
    assert _report(tmp_path, detections)["input-drift"] == expected


def test_the_users_run_retrained_nothing_because_its_windows_were_too_small_for_the_default_policy(
    tmp_path: Path,
) -> None:
    """Trial 12e: ~60 samples a window, no drift verdict; the default policy's input-drift needs 200."""
    detections = [
        detection(v, n, d) for v in ("v1", "v2") for n in range(3, 8) for d in (TEXT, "drift.script_mix.v1")
    ]
    detections.append(detection("v2", 5, "drift.embedding_mmd.v1", "warning", size=59))
    history = HistoryReader(write(tmp_path, detections=detections))
    report = policy_report(
        history, resolve_range(history, None, 7, ("detections",)), load_policy(), None, [], [], []
    )
    [retrain] = [r for r in report.rules if r.rule == "input-drift"]
    assert (report.name, report.file, retrain.state) == ("default", None, "not fired")
    assert retrain.why == (
        "10 windows (21 detections) judged by drift.*, none drift;"
        " and min_samples 200: the largest window had 60"
    )


def test_gates_met_while_a_rollback_fires_name_the_inhibit_rule_and_a_fired_rule_names_its_request(
    tmp_path: Path,
) -> None:
    rollback_alert = alert("bad-replies", "rollback", "quality.negative_feedback.v1", "v2", "firing", at(0))
    report = _report(
        tmp_path,
        [*_drift("v2", range(4)), detection("v2", 0, "quality.negative_feedback.v1", "drift", p=1e-9)],
        alerts=[rollback_alert],
        actions=[rollback_request(window_end=at(1))],
    )
    assert report["bad-replies"] == (
        f"fired: firing since 00:41:40 (window time); rollback requested: {REQUEST}"
    )
    assert report["input-drift"] == (
        "not fired: its gates were met on drift.text_length.v1 of hh-concierge/v2 at 00:42:20,"
        " while bad-replies"
        " fired for hh-concierge (since 00:41:40): the inhibit rule (action=rollback mutes action=retrain,"
        " equal model) holds it (muted alerts are not written to the history)"
    )


def test_a_fired_alert_without_a_request_names_the_cooldown_it_was_in(tmp_path: Path) -> None:
    earlier = rollback_request("lw-rollback-earlier", window_end=at(0))
    fired = alert("bad-replies", "rollback", "quality.negative_feedback.v1", "v2", "firing", at(3))
    report = _report(
        tmp_path, [detection("v2", 3, "quality.negative_feedback.v1", "drift")], [fired], [earlier]
    )
    assert report["bad-replies"] == (
        "fired, no request: firing since 00:42:40 (window time), but no rollback request answers it:"
        " in cooldown (1:00:00) after rollback lw-rollback-earlier at 00:41:40"
    )


def test_alert_rows_show_resolved_by_and_a_history_written_before_it_loads_without_the_column(
    tmp_path: Path,
) -> None:
    resolved = alert("bad-replies", "rollback", "quality.negative_feedback.v1", "v2", "resolved", at(9))
    resolved["resolved_by"] = f"rollback {REQUEST} verified: v1 serves and is better"
    new = write(tmp_path / "new", alerts=[resolved])
    old_schema = pa.schema([f for f in SCHEMAS["alerts"] if f.name != "resolved_by"])
    old = write(
        tmp_path / "old",
        {"alerts": old_schema},
        alerts=[{k: v for k, v in resolved.items() if k != "resolved_by"}],
    )
    for root, shown in ((new, resolved["resolved_by"]), (old, None)):
        with TestClient(
            create_app(build_console(Settings(), history=root, datasets=str(tmp_path)))
        ) as client:
            [row] = client.get("/api/incidents").json()["alerts"]
            assert row["resolved_by"] == shown
            html = client.get("/incidents").text
            assert ("<th>resolved by</th>" in html) is (shown is not None)
            assert shown is None or shown in html


def test_the_console_explains_the_policy_it_is_given_and_bad_parameters_stay_4xx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    root = write(tmp_path / "history", detections=[detection("v2", 0, TEXT)])
    with TestClient(
        create_app(build_console(Settings(), history=root, datasets=str(tmp_path), policy=str(policy)))
    ) as client:
        view = client.get("/api/incidents").json()
        assert (view["policy"]["name"], view["policy"]["file"]) == ("trial", str(policy))
        assert f"Policy <code>trial</code> (file {policy}" in client.get("/incidents").text
        assert client.get("/api/incidents?days=0").status_code == 422
        schema = client.get("/api/openapi.json").json()["components"]["schemas"]
        assert {"policy", "resolved_by_known"} <= set(schema["Incidents"]["properties"])
        assert {"after", "counted", "rule"} <= set(schema["ActionRow"]["properties"])
    from_env = build_console(Settings(policy_file=policy), history=root, datasets=str(tmp_path))
    assert from_env.policy_file == str(policy)  # LOOPWATCH_POLICY_FILE, as the workers read it
    # `loopwatch console --policy FILE` hands the file to the console.
    import services.console as console_package
    from services.cli import main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(console_package, "serve", lambda built, **_: seen.setdefault("console", built))
    result = CliRunner().invoke(main, ["console", "--history", root, "--policy", str(policy)])
    assert result.exit_code == 0, result.output
    assert seen["console"].policy_file == str(policy) and seen["console"].policy.name == "trial"


def test_the_page_judges_each_window_as_the_decide_stage_gates_do() -> None:
    """The page's column-wise gates give what ``retrain_trigger.gates.judge`` gives, row for row."""
    from itertools import product

    from retrain_trigger.gates import judge
    from schemas.events import Detection
    from services.console.policy_explain import _day_rows, _outcomes

    rule = parse_policy(
        POLICY.replace(
            "{min_samples: 30, for_windows: 1}",
            "{min_samples: 30, max_p_value: 0.01, immediate_p_value: 1e-6}",
        )
    ).rules[0]
    cases = list(
        product(["ok", "warning", "drift"], [10, 30], [None, 0.5], [None, 0.2, 1e-3, 1e-9], [None, 0.5])
    )
    rows = []
    for n, (verdict, size, effect, p, adjusted) in enumerate(cases):
        row = detection("v2", n, "quality.negative_feedback.v1", verdict, size=size, p=p, effect=effect)  # type: ignore[arg-type]
        row["measurements"] = json.dumps({} if adjusted is None else {"p_value_adjusted": adjusted})
        rows.append(row)
    day = _day_rows(pa.Table.from_pylist(rows, schema=SCHEMAS["detections"]), [rule])
    got = _outcomes(rule, day).tolist()
    assert day["window_start"].to_pylist() == [r["window_start"] for r in rows]  # one alert: window order
    expected = []
    for row in rows:
        evidence = judge(
            rule,
            Detection(
                detection_id=row["detection_id"],
                detector_id=row["detector_id"],
                detector_version="1",
                config={},
                segment=Segment(model=MODEL, model_version="v2"),
                window_start=row["window_start"],
                window_end=row["window_end"],
                reference_size=60,
                current_size=row["current_size"],
                p_value=row["p_value"],
                effect_size=row["effect_size"],
                verdict=row["verdict"],
                measurements=json.loads(row["measurements"]),
                reference="stable",
                detected_at=row["window_end"],
            ),
        )
        expected.append({"skip": -1, "clear": 0}.get(evidence.outcome, 2 if evidence.immediate else 1))
    assert got == expected and {-1, 0, 1, 2} <= set(got)


def test_a_run_of_breaching_windows_over_midnight_counts_as_one(tmp_path: Path) -> None:
    """Two drift windows before midnight and one after: for_windows 3 is met on the first of the new day."""
    evening = START.replace(hour=23, minute=59, second=20)
    rows = []
    for n in range(3):
        row = detection("v2", 0, TEXT, "drift")
        start = evening + n * W
        row |= {"day": start.date(), "window_start": start, "window_end": start + W, "detection_id": f"d{n}"}
        rows.append(row)
    history = HistoryReader(write(tmp_path, detections=rows))
    span = resolve_range(history, None, 7, ("detections",))
    report = policy_report(history, span, parse_policy(POLICY), None, [], [], [])
    [retrain] = [r for r in report.rules if r.rule == "input-drift"]
    assert retrain.why == (
        "its gates were met on drift.text_length.v1 of hh-concierge/v2 at 00:00:00,"
        " but no alert of it is in the history (the worker's log says why)"
    )


def test_the_demo_console_explains_the_policy_the_demo_decided_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`loopwatch demo --console` opens the run's history with the demo's own policy file (the summary's)."""
    import services.console as console_package
    import services.demo as demo_package
    from services.cli import main

    policy = tmp_path / "demo-policy.yaml"
    policy.write_text(POLICY)
    summary = {"history_uri": str(tmp_path), "datasets_uri": str(tmp_path), "policy_file": str(policy)}
    monkeypatch.setattr(demo_package, "run_demo", lambda *a, **k: {**summary, "counts_add_up": True})
    seen: dict[str, Any] = {}
    monkeypatch.setattr(console_package, "serve", lambda built, **_: seen.setdefault("console", built))
    result = CliRunner().invoke(main, ["demo", "--console"])
    assert result.exit_code == 0, result.output
    assert (seen["console"].policy_file, seen["console"].policy.name) == (str(policy), "trial")
