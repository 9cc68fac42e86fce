"""The demo runs end to end on the embedded broker, with its default traffic."""

from __future__ import annotations

import io
import json

import pytest

from services.demo import CANARY_VERSION, run_demo
from services.settings import Settings

pytestmark = pytest.mark.broker


def test_demo_end_to_end(tmp_path):
    out = io.StringIO()
    summary_path = tmp_path / "summary.json"
    summary = run_demo(
        Settings(data_dir=tmp_path / "state"),
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
    # The incident: the canary serves the replies people rejected, and its feedback shows it.
    flagged = {(d["detector"], d["version"], d["verdict"]) for d in summary["detections"]["flagged"]}
    assert ("quality.negative_feedback.v1", CANARY_VERSION, "drift") in flagged, summary["detections"]
    assert ("quality.canary.v1", CANARY_VERSION, "drift") in flagged
    assert summary["detections"]["by_verdict"]["ok"] > 0
