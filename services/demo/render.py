"""The demo's summary: what it saw as a JSON-ready dict, and as a few readable lines."""

from __future__ import annotations

import shlex
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from core.settings import Topics
from schemas.events import Detection
from services.demo.mlflow import alias_change
from services.demo.observe import Loop, Observed
from services.demo.scenario import WINDOW_SECONDS, Traffic
from streams.metrics import metric_total


def summarize(
    traffic: Traffic,
    seen: Observed,
    loop: Loop,
    topics: Topics,
    metrics_text: str,
    *,
    where: str,
    elapsed: float,
    replayed_at: float,
) -> dict[str, Any]:
    """The summary of a run: counts in and out, detections, alerts, actions and their timeline."""
    summary = _summary(traffic, seen, topics, metrics_text, where, elapsed)
    summary["detections"] = _detections_summary(loop.detections)
    summary["alerts"] = [
        {
            "fingerprint": alert.fingerprint,
            "status": alert.status,
            "severity": alert.severity,
            "summary": alert.summary,
            "labels": alert.labels,
            "starts_at": alert.starts_at.isoformat(),
            "ends_at": alert.ends_at.isoformat() if alert.ends_at else None,
            "published_at": _iso(at),
        }
        for at, alert in sorted(loop.alerts, key=lambda item: item[0])
    ]
    summary["actions"] = [
        {
            "id": event.id,
            "type": event.type,
            "subject": event.subject,
            "time": event.time.isoformat(),
            "published_at": _iso(at),
            **{
                k: event.data[k]
                for k in ("from_version", "target_version", "verified", "reason", "dataset")
                if event.data.get(k) is not None
            },
        }
        for at, event in sorted(loop.actions, key=lambda item: item[0])
    ]
    summary["timeline"] = _timeline(loop, replayed_at)
    return summary


def _summary(
    traffic: Traffic, seen: Observed, topics: Topics, metrics_text: str, where: str, elapsed: float
) -> dict[str, Any]:
    events_in = {
        "inference": traffic.count(topics.inference) + traffic.otlp_spans,
        "feedback": traffic.count(topics.feedback),
    }
    # A message on the OTLP topic that is not OTLP is one message in and one dead letter out.
    total_in = sum(events_in.values()) + traffic.count(topics.otlp_spans) - traffic.otlp_messages
    valid_feedback = int(metric_total(metrics_text, "loopwatch_events_valid_total", topic=topics.feedback))
    dead = sum(seen.rejections.values())
    return {
        "broker": where,
        "elapsed_seconds": round(elapsed, 1),
        "events_in": {
            **events_in,
            "total": total_in,
            "before_rollback": len(traffic.messages),
            "after_rollback": len(traffic.after_rollback),
        },
        "valid": {"inference": seen.enriched, "feedback": valid_feedback},
        "dead_lettered": {
            "total": dead,
            "by_reason": dict(sorted(seen.rejections.items())),
            "examples": dict(sorted(seen.examples.items())),
        },
        "feedback": {
            "joined": seen.joined,
            "sent_before_their_inference": traffic.feedback_first,
            "duplicates_ignored": int(metric_total(metrics_text, "loopwatch_feedback_duplicate_total")),
            "unmatched_expired": seen.unmatched,
        },
        "counts_add_up": total_in == seen.enriched + valid_feedback + dead,
        "otlp": {
            "llm_spans": traffic.otlp_spans,
            "collector_messages": traffic.otlp_messages,
            "skipped_spans": int(metric_total(metrics_text, "loopwatch_otlp_skipped_total")),
        }
        if traffic.otlp_messages
        else None,
        "expected": {
            "dead_lettered": dict(sorted(traffic.expected_rejections.items())),
            "joined": traffic.expected_joins,
            "unmatched": traffic.expected_unmatched,
            "duplicates": traffic.duplicates,
        },
        "alerts": [],
        "actions": [],
        "timeline": [],
        "datasets": [],
        "export": None,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _timeline(loop: Loop, replayed_at: float) -> list[str]:
    """The incident as it unfolded: seconds after the replay began, and what was published."""
    lines = []
    for at, alert in loop.alerts:
        labels = alert.labels
        what = f"alert {alert.status:<8} {alert.severity:<8} {labels.get('rule', '')} "
        what += f"{labels.get('model', '')}@{labels.get('model_version', '')}: {alert.summary}"
        lines.append((at, what))
    for at, event in loop.actions:
        extra = ""
        if "target_version" in event.data:
            extra = f" {event.data.get('from_version')} -> {event.data['target_version']}"
        if "reason" in event.data:
            extra += f" ({event.data['reason']}{alias_change(event.data)})"
        if event.data.get("dataset"):
            dataset = event.data["dataset"]
            extra += f" train on {dataset['table']}@v{dataset['version']}"
        lines.append((at, f"{event.type} {event.subject}{extra} id={event.id}"))
    return [f"+{at - replayed_at:5.1f}s  {what}" for at, what in sorted(lines)]


def _detections_summary(detections: list[Detection]) -> dict[str, Any]:
    """Counts by verdict, and every warning or drift with what a person needs to read it."""
    return {
        "total": len(detections),
        "by_verdict": dict(sorted(Counter(d.verdict for d in detections).items())),
        "flagged": [
            {
                "id": d.detection_id,
                "detector": d.detector_id,
                "verdict": d.verdict,
                "model": d.segment.model,
                "version": d.segment.model_version,
                "tenant": d.segment.tenant,
                "window_start": d.window_start.isoformat(),
                "window_end": d.window_end.isoformat(),
                "reference": d.reference,
                "statistic": d.statistic,
                "p_value": d.p_value,
                "effect_size": d.effect_size,
                "flagged_request_ids": d.evidence.request_ids[:5],
            }
            for d in detections
            if d.verdict != "ok"
        ],
    }


# Why a table can stay empty in the demo: its traffic holds no such feedback.
_EMPTY_DATASETS = {
    "sft": "it takes negative feedback that carries a correction; HH-RLHF and OASST1 give thumbs "
    "and ratings only",
    "preference": "it takes a correction, or two versions with opposite feedback on one prompt",
    "golden": "it takes positive feedback",
    "safety_review": "the cheap toxicity scorer flagged no prompt or reply",
}


def render(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    s = summary
    lines = [
        "",
        f"loopwatch demo: real HH-RLHF and OASST1 traffic through the {s['broker']}",
        f"  in:        {s['events_in']['inference']} inference logs, "
        f"{s['events_in']['feedback']} feedback events ({s['events_in']['before_rollback']} replayed "
        f"before the rollback request, {s['events_in']['after_rollback']} after it)",
        f"  valid:     {s['valid']['inference']} inference logs enriched and forwarded for detection, "
        f"{s['valid']['feedback']} feedback events",
        f"  rejected:  {s['dead_lettered']['total']} messages dead-lettered with a reason:",
    ]
    if s.get("otlp"):
        otlp = s["otlp"]
        lines.insert(
            -1,
            f"  otlp:      {otlp['llm_spans']} of the inference logs arrived as LLM spans in "
            f"{otlp['collector_messages']} OTLP Collector messages; {otlp['skipped_spans']} other spans "
            "(the app's HTTP spans) skipped",
        )
    for reason, count in s["dead_lettered"]["by_reason"].items():
        example = s["dead_lettered"]["examples"][reason]
        lines.append(f"     {count:3d}  {reason:<24} e.g. {example[:90]}")
    fb = s["feedback"]
    lines += [
        f"  join:      {fb['joined']} feedback events joined to their inference "
        f"({fb['sent_before_their_inference']} had arrived first), "
        f"{fb['duplicates_ignored']} duplicates ignored, {fb['unmatched_expired']} unmatched kept after TTL",
        f"  check:     in {s['events_in']['total']} = valid "
        f"{s['valid']['inference'] + s['valid']['feedback']} + dead-lettered {s['dead_lettered']['total']}: "
        + ("adds up" if s["counts_add_up"] else "DOES NOT ADD UP"),
    ]
    det = s["detections"]
    verdicts = ", ".join(f"{n} {verdict}" for verdict, n in det["by_verdict"].items()) or "none"
    lines.append(f"  detect:    {det['total']} detections on {WINDOW_SECONDS}s windows ({verdicts})")
    for d in det["flagged"]:
        effect = "" if d["effect_size"] is None else f" effect {d['effect_size']:.3g}"
        p_value = "" if d["p_value"] is None else f" p={d['p_value']:.2g}"
        lines.append(
            f"     {d['verdict']:<7} {d['detector']:<30} {d['model']}@{d['version']} ({d['tenant']}) "
            f"window {d['window_start'][11:19]}{effect}{p_value}"
        )
    for table in s["datasets"]:
        lines.append(
            f"  dataset:   {table['table']:<14} version {table['version']:>3}, "
            f"{table['rows']} rows  {table['uri']}"
        )
    written = {table["table"] for table in s["datasets"]}
    if written:
        lines += [
            f"  dataset:   {kind:<14} none: {why}"
            for kind, why in _EMPTY_DATASETS.items()
            if kind not in written
        ]
    if s["export"]:
        e = s["export"]
        lines.append(
            f"  exported:  {e['table']}@v{e['version']} ({e['rows']} rows, chat JSONL) to {e['path']}"
        )
    if s["timeline"]:
        lines.append("  timeline (seconds after the replay began):")
        lines += [f"     {line}" for line in s["timeline"]]
    if "history_uri" in s:
        # The same run again, decided-by policy included (without it the Incidents page explains the default).
        again = ("--history", s["history_uri"], "--datasets", s["datasets_uri"], "--policy", s["policy_file"])
        lines.append(f"  console:   loopwatch console {shlex.join(again)}")
    lines.append(f"  took {s['elapsed_seconds']}s")
    return "\n".join(lines)
