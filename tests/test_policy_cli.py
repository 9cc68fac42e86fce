"""``loopwatch policy``, ``silence`` and ``model`` commands, through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from retrain_trigger.policy import DEFAULT_POLICY
from services.cli import main
from tests.test_decide_pipeline import POLICY, detection


def _detections_file(tmp_path: Path) -> Path:
    """An incident: v1 fine, v2 rejected by users for three windows, then v1 back and fine."""
    stream = [detection(m, "neg", "v1", "ok", rate=0.1) for m in range(3)]
    stream += [detection(m, "neg", "v2", "drift", rate=0.4) for m in range(3, 6)]
    stream += [detection(m, "neg", "v1", "ok", rate=0.1) for m in range(6, 9)]
    path = tmp_path / "detections.jsonl"
    # Written out of order: the backtest sorts by detection time.
    path.write_text("\n".join(d.model_dump_json() for d in reversed(stream)) + "\n")
    return path


def _policy_file(tmp_path: Path, text: str = POLICY) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_policy_check_explains_the_default_policy() -> None:
    result = CliRunner().invoke(main, ["policy", "check", str(DEFAULT_POLICY)])
    assert result.exit_code == 0, result.output
    assert f"{DEFAULT_POLICY}: ok" in result.output
    assert "bad-replies: quality.negative_feedback.v1" in result.output
    assert "alert + rollback request (critical) after 1 consecutive window(s), >= 30 samples" in result.output
    assert "quality.negative_feedback.v1 -> bad-replies (rollback)" in result.output
    assert "drift.ks.v1 -> input-drift (retrain)" in result.output
    assert "while {action=rollback} fires, {action=retrain} with the same model is muted" in result.output


def test_policy_check_refuses_a_bad_file_with_its_line(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, POLICY.replace("cooldown: 2h", "cooldown: 2 hours"))
    result = CliRunner().invoke(main, ["policy", "check", str(path)])
    assert result.exit_code == 2
    assert f"error: {path}:6: cooldown: Value error, '2 hours' is not a duration" in result.output


def test_backtest_counts_and_times_what_the_policy_would_do(tmp_path: Path) -> None:
    args = [
        "policy",
        "backtest",
        str(_policy_file(tmp_path)),
        "--detections",
        str(_detections_file(tmp_path)),
    ]
    result = CliRunner().invoke(main, [*args, "--stable", "chat=v1", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 0, result.output
    assert "9 detections, policy 'test' (auto)" in result.output
    assert "  actions rollback.requested: 1" in result.output
    assert "  actions rollback.verified: 1" in result.output
    # v2 gets no traffic after the rollback; the verification resolves its alert (issue 12, trial 12e).
    assert "  alerts firing: 1" in result.output and "  alerts resolved: 1" in result.output
    # The rollback comes at the end of the first bad window, 3 minutes after the first detection.
    rollback_line = next(line for line in result.output.splitlines() if "rollback.requested v2 -> v1" in line)
    assert rollback_line.split()[:3] == ["2026-03-01T12:04:00+00:00", "+0:03:00", "action"]

    as_json = CliRunner().invoke(
        main, [*args, "--format", "json", "--stable", "chat=v1", "--state-dir", str(tmp_path / "state")]
    )
    report = json.loads(as_json.output)
    assert report["counts"] == {
        "alerts firing": 1,
        "alerts resolved": 1,
        "pages": 2,
        "actions rollback.requested": 1,
        "actions rollback.verified": 1,
    }
    assert [e["kind"] for e in report["timeline"]].count("action") == 2


def test_backtest_uses_stable_versions_marked_with_the_cli(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    args = [
        "policy",
        "backtest",
        str(_policy_file(tmp_path)),
        "--detections",
        str(_detections_file(tmp_path)),
    ]
    without = CliRunner().invoke(main, [*args, *state])
    assert "rollback.requested" not in without.output  # no stable version known: no rollback
    marked = CliRunner().invoke(main, ["model", "mark-stable", "chat", "v1", *state])
    assert marked.exit_code == 0 and marked.output.strip() == "chat: v1 is stable"
    again = CliRunner().invoke(main, ["model", "mark-stable", "chat", "v0", *state])
    assert again.output.strip() == "chat: v0 is stable (was v1)"
    CliRunner().invoke(main, ["model", "mark-stable", "chat", "v1", *state])
    assert "rollback.requested v2 -> v1" in CliRunner().invoke(main, [*args, *state]).output


def test_backtest_refuses_a_bad_detections_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(detection(0).model_dump_json() + "\n" + '{"detector_id": "x"}\n')
    result = CliRunner().invoke(
        main, ["policy", "backtest", str(_policy_file(tmp_path)), "--detections", str(bad)]
    )
    assert result.exit_code == 2 and f"{bad}:2: not a Detection" in result.output


def test_silences_add_list_expire(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path)]
    runner = CliRunner()
    added = runner.invoke(
        main,
        [
            "silence",
            "add",
            "-m",
            "model=chat",
            "-m",
            "alertname=~input-.*",
            "--duration",
            "2h",
            "--comment",
            "upgrade",
            *state,
        ],
    )
    assert added.exit_code == 0, added.output
    silence_id = added.output.strip()
    listed = runner.invoke(main, ["silence", "list", *state])
    assert silence_id in listed.output and "active" in listed.output
    assert "model=chat,alertname=~input-.*" in listed.output and "upgrade" in listed.output
    expired = runner.invoke(main, ["silence", "expire", silence_id[:6], *state])
    assert expired.exit_code == 0 and f"expired {silence_id}" in expired.output
    assert runner.invoke(main, ["silence", "list", *state]).output.strip() == "no silences"
    assert "expired" in runner.invoke(main, ["silence", "list", "--all", *state]).output
    saved = json.loads((tmp_path / "silences.json").read_text())
    assert saved["items"][silence_id]["comment"] == "upgrade"


def test_silence_add_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path)]
    bad_matcher = runner.invoke(main, ["silence", "add", "-m", "model", "--comment", "x", *state])
    assert bad_matcher.exit_code == 2 and "is not a matcher" in bad_matcher.output
    bad_duration = runner.invoke(
        main, ["silence", "add", "-m", "model=a", "--duration", "soon", "--comment", "x", *state]
    )
    assert bad_duration.exit_code == 2 and "is not a duration" in bad_duration.output
    unknown = runner.invoke(main, ["silence", "expire", "nope", *state])
    assert unknown.exit_code == 2 and "no single silence" in unknown.output
