"""The Segment page's series: one per detector and config, each point with its config and verdict.

A detector can run with several configs on one segment (``drift.text_length.v1``
on the prompt and on the response): each config is its own series, labelled
with what sets its config apart, so two measures are never drawn as one line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from curation.history import config_id

Verdict = Literal["ok", "warning", "drift"]
ThresholdKind = Literal["min_effect_size", "threshold"]
THRESHOLD_LABELS: dict[ThresholdKind, str] = {
    "min_effect_size": "min effect size (drift needs a significant p too)",
    "threshold": "threshold",
}


class ReportLink(BaseModel):
    """A window's Evidently report."""

    window_start: datetime
    detection_id: str


class DetectorSeries(BaseModel):
    """One detector config's results over the windows of a segment, oldest first."""

    detector_id: str
    config_ids: list[str] = Field(description="The config of this series (none: no id in the history)")
    config_label: str = Field("", description="What sets this config apart, e.g. column=prompt_chars")
    config_id: list[str | None] = Field(default_factory=list, description="Per point: its config id")
    window_start: list[datetime]
    statistic: list[float | None]
    threshold: list[float | None]
    threshold_kind: ThresholdKind = Field(
        "threshold",
        description="min_effect_size: the statistic is the effect size and the line its minimum, not a"
        " breach line (a point above it is ok when its p-value is not significant)",
    )
    threshold_label: str = "threshold"
    p_value: list[float | None]
    effect_size: list[float | None]
    verdict: list[Verdict]
    windows: int = Field(0, description="Distinct windows judged")
    drift_windows: int = Field(0, description="Distinct windows with a drift verdict")
    warning_windows: int = Field(0, description="Distinct windows whose worst verdict is a warning")
    measurements: dict[str, list[float | None]] = Field(
        default_factory=dict, description="Quality rates and percentiles, per name"
    )
    reports: list[ReportLink] = Field(default_factory=list)


def config_labels(specs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """``config_id`` -> what sets it apart from its detector's other configs (``column=prompt_chars``)."""
    from detectors.registry import create
    from schemas.errors import LoopwatchError

    full: dict[str, list[dict[str, Any]]] = {}
    for detector_id, given in specs:
        try:
            # The id the history holds hashes the config with its defaults, as the detect stage built it.
            config = create(detector_id, dict(given)).config.model_dump(mode="json")
        except LoopwatchError:
            continue  # a detector this console cannot build: its series keeps the bare id
        full.setdefault(detector_id, []).append(config)
    labels: dict[str, str] = {}
    for configs in full.values():
        keys = sorted({k for c in configs for k in c})
        differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        for config in configs:
            shown = differing or [k for k in ("column",) if k in config]
            labels[config_id(config)] = ", ".join(f"{k}={config.get(k)}" for k in shown)
    return labels


def detector_series(
    frame: pd.DataFrame, labels: Mapping[str, str], is_rate: Callable[[str], bool]
) -> list[DetectorSeries]:
    """One series per (detector, config) of a segment's detections (columns of the history table)."""
    series: list[DetectorSeries] = []
    if frame.empty:
        return series
    frame = frame.assign(config_id=frame["config_id"].fillna("")).sort_values(
        ["detector_id", "config_id", "window_start"]
    )
    groups = list(frame.groupby(["detector_id", "config_id"], sort=True))
    per_detector = pd.Series([str(d) for (d, _), _ in groups]).value_counts()
    for (detector_id, config), group in groups:
        label = labels.get(str(config), "")
        if not label and per_detector[str(detector_id)] > 1:
            label = f"config {config}"  # unknown to this console, but still told apart
        measurements: dict[str, list[float | None]] = {}
        if str(detector_id).startswith("quality."):
            parsed = [json.loads(m) if m else {} for m in group["measurements"]]
            names = sorted({k for m in parsed for k in m if is_rate(k)})
            measurements = {k: [_num(m.get(k)) for m in parsed] for k in names}
        kind = _threshold_kind(group)
        worst = group.assign(rank=group["verdict"].map({"ok": 0, "warning": 1, "drift": 2}).fillna(0))
        worst = worst.groupby("window_start")["rank"].max()
        series.append(
            DetectorSeries(
                detector_id=str(detector_id),
                config_ids=[str(config)] if config else [],
                config_label=label,
                config_id=[str(config) or None] * len(group),
                window_start=list(group["window_start"]),
                statistic=[_num(v) for v in group["statistic"]],
                threshold=[_num(v) for v in group["threshold"]],
                threshold_kind=kind,
                threshold_label=THRESHOLD_LABELS[kind],
                p_value=[_num(v) for v in group["p_value"]],
                effect_size=[_num(v) for v in group["effect_size"]],
                verdict=list(group["verdict"]),
                windows=int(worst.size),
                drift_windows=int((worst == 2).sum()),
                warning_windows=int((worst == 1).sum()),
                measurements=measurements,
                reports=_reports(group),
            )
        )
    return series


def _reports(group: pd.DataFrame) -> list[ReportLink]:
    # Only the few windows with a report: boxing every window's timestamp costs more than the page.
    linked = group[group["report_path"].fillna("").astype(bool)]
    return [
        ReportLink(window_start=w.to_pydatetime(), detection_id=str(d))
        for w, d in zip(linked["window_start"], linked["detection_id"], strict=True)
    ]


def _threshold_kind(group: pd.DataFrame) -> ThresholdKind:
    # Detectors that judge an effect against a minimum report the effect as their statistic and the
    # minimum as their threshold; the verdict also needs a significant p, so the line is no breach line.
    both = group[["statistic", "effect_size"]].dropna()
    if len(both) and bool(((both["statistic"] - both["effect_size"]).abs() <= 1e-12).all()):
        return "min_effect_size"
    return "threshold"


def _num(value: Any) -> float | None:
    # Strict JSON out: NaN and infinities (a detector that could not decide) become null.
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
