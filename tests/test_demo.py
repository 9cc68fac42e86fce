"""The demo runs end to end on the embedded broker, with its default traffic."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.history_store import HistoryStore
from services.console import build_console, create_app
from services.demo import CANARY_VERSION, run_demo

pytestmark = pytest.mark.broker


def test_demo_end_to_end(tmp_path, monkeypatch):
    out = io.StringIO()
    summary_path = tmp_path / "summary.json"
    monkeypatch.chdir(tmp_path)  # a relative data dir, as `./run demo` has: the summary's URIs are absolute
    summary = run_demo(
        Settings(data_dir=Path("state")),
        summary_json=summary_path,
        out=out,
    )
    assert json.loads(summary_path.read_text()) == summary
    assert summary["counts_add_up"]
    assert summary["dead_lettered"]["by_reason"] == summary["expected"]["dead_lettered"]
    assert summary["feedback"]["joined"] == summary["expected"]["joined"]
    assert summary["feedback"]["unmatched_expired"] == summary["expected"]["unmatched"]
    assert summary["feedback"]["duplicates_ignored"] == summary["expected"]["duplicates"]
    assert "adds up" in out.getvalue()
    # What is replayed when: the events before the rollback request, and the rest after it.
    events_in = summary["events_in"]
    assert events_in["before_rollback"] + events_in["after_rollback"] == events_in["total"]
    assert f"{events_in['after_rollback']} more once the rollback is requested" in out.getvalue()
    assert f"{events_in['before_rollback']} replayed before the rollback request" in out.getvalue()
    # The incident: the canary serves the replies people rejected, and its feedback shows it.
    flagged = {(d["detector"], d["version"], d["verdict"]) for d in summary["detections"]["flagged"]}
    assert ("quality.negative_feedback.v1", CANARY_VERSION, "drift") in flagged, summary["detections"]
    assert ("quality.canary.v1", CANARY_VERSION, "drift") in flagged
    assert summary["detections"]["by_verdict"]["ok"] > 0
    # ... is rolled back exactly once, to the stable version, and the rollback is verified ...
    types = [a["type"] for a in summary["actions"]]
    assert types.count("io.loopwatch.rollback.requested") == 1, summary["actions"]
    [rollback] = [a for a in summary["actions"] if a["type"] == "io.loopwatch.rollback.requested"]
    assert (rollback["subject"], rollback["from_version"], rollback["target_version"]) == (
        "support-assistant",
        CANARY_VERSION,
        "2026-10-01",
    )
    assert "io.loopwatch.rollback.verified" in types
    # ... and its alerts fire, then resolve.
    statuses = {a["fingerprint"]: [] for a in summary["alerts"]}
    for alert in summary["alerts"]:
        statuses[alert["fingerprint"]].append(alert["status"])
    assert statuses and all(s == ["firing", "resolved"] for s in statuses.values()), statuses
    assert any("rollback.requested" in line for line in summary["timeline"])
    # The curated tables grew; the retrain request names one of their versions, which is exported.
    tables = {t["table"]: t for t in summary["datasets"]}
    assert tables["preference"]["rows"] > 0 and tables["golden"]["rows"] > 0
    # The demo's feedback carries no corrections, so no SFT table, and the output says why.
    assert "sft" not in tables
    assert "sft            none: it takes negative feedback that carries a correction" in out.getvalue()
    [retrain] = [a for a in summary["actions"] if a["type"] == "io.loopwatch.retrain.requested"]
    assert retrain["dataset"]["table"] in tables and retrain["dataset"]["version"] >= 0
    export = summary["export"]
    named = retrain["dataset"]
    assert (export["table"], export["version"]) == (named["table"], named["version"])
    lines = Path(export["path"]).read_text().splitlines()
    assert len(lines) == export["rows"] > 0
    assert all(json.loads(line).keys() >= {"prompt", "chosen", "rejected"} for line in lines)
    assert len(pd.read_json(export["path"], lines=True)) == export["rows"]
    # The worker stopped once its history held what the summary reports: every transition, action, detection.
    assert Path(summary["history_uri"]).is_absolute() and Path(summary["datasets_uri"]).is_absolute()
    assert "the history has not caught up" not in out.getvalue()
    history = HistoryStore(summary["history_uri"])
    written = {(a["fingerprint"], a["status"]) for a in history.read("alerts").to_pylist()}
    assert written == {(a["fingerprint"], a["status"]) for a in summary["alerts"]}
    assert set(history.read("actions").column("id").to_pylist()) == {a["id"] for a in summary["actions"]}
    flagged_ids = {d["id"] for d in summary["detections"]["flagged"]}
    assert flagged_ids <= set(history.read("detections").column("detection_id").to_pylist())
    # `loopwatch console --history ... --datasets ...` opens this very run.
    console = build_console(Settings(), history=summary["history_uri"], datasets=summary["datasets_uri"])
    with TestClient(create_app(console)) as client:
        incidents = client.get("/api/incidents").json()
        assert rollback["id"] in [a["id"] for a in incidents["actions"]]
        assert rollback["id"] in client.get("/incidents").text
        # Without --policy it explains the default policy, and says that is not what decided.
        assert "not under this policy" in client.get("/incidents").text
        reasons = {r["reason"]: r["count"] for r in client.get("/api/deadletters").json()["reasons"]}
        assert reasons == summary["dead_lettered"]["by_reason"]
        versions = [v for m in client.get("/api/overview").json()["models"] for v in m["versions"]]
        [canary] = [v for v in versions if v["model_version"] == CANARY_VERSION]
        assert canary["role"] == "canary" and canary["worst_verdict"] == "drift"
        segment = client.get("/api/segments/" + quote(canary["segment"], safe="")).json()
        assert "quality.negative_feedback.v1" in [d["detector_id"] for d in segment["detectors"]]
        datasets = {t["table"]: t["rows"] for t in client.get("/api/datasets").json()["tables"]}
        assert datasets == {t["table"]: t["rows"] for t in summary["datasets"]}
    # The summary says how to open this run again, with the policy that decided its actions: under it
    # the Incidents page explains those actions (trial 12q: without it, the default policy's rules did).
    [again] = [line for line in out.getvalue().splitlines() if line.startswith("  console:   ")]
    args = shlex.split(again.removeprefix("  console:   loopwatch console "))
    opened = dict(zip(args[::2], args[1::2], strict=True))
    assert opened == {
        "--history": summary["history_uri"],
        "--datasets": summary["datasets_uri"],
        "--policy": summary["policy_file"],
    }
    console = build_console(
        Settings(), history=opened["--history"], datasets=opened["--datasets"], policy=opened["--policy"]
    )
    with TestClient(create_app(console)) as client:
        policy = client.get("/api/incidents").json()["policy"]
        page = client.get("/incidents").text
    assert policy["decided_under"] == [policy["name"]] != ["default"]
    assert "fired" in [r["state"] for r in policy["rules"]] and "not under this policy" not in page
