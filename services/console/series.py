"""The Segment page's series: one per detector and config, each point with its config and verdict.

A detector can run with several configs on one segment (``drift.text_length.v1``
on the prompt and on the response): each config is its own series, labelled
with what sets its config apart, so two measures are never drawn as one line.
Each point is the latest revision of its window's verdict; a window its
detector had too few samples for is "not judged" and has no value to draw.
Each series is drawn on its threshold's scale: the p-value against alpha, the
effect size against the minimum effect, the statistic against an SLO.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from curation.history import config_id

Verdict = Literal["ok", "warning", "drift"]
#: What a point or window shows: a verdict, or why there is none.
Shown = Literal["ok", "warning", "drift", "not judged"]
ThresholdKind = Literal["min_effect_size", "threshold", "alpha", "min_probability"]
THRESHOLD_LABELS: dict[ThresholdKind, str] = {
    "min_effect_size": "min effect size (drift needs a significant p too)",
    "threshold": "threshold",
    "alpha": "alpha (drift needs a p-value below it)",
    "min_probability": "min probability worse",
}
#: The history's ``threshold_of`` -> the column drawn against the threshold, its kind and its label.
SCALES: dict[str, tuple[str, ThresholdKind, str]] = {
    "p_value": ("p_value", "alpha", "p-value"),
    "effect_size": ("effect_size", "min_effect_size", "effect size"),
    "statistic": ("statistic", "threshold", "statistic"),
    "score": ("score", "min_probability", "probability worse"),
}
_RANK = {"ok": 0, "warning": 1, "drift": 2}


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
    value: list[float | None] = Field(
        default_factory=list,
        description="Per point: what the threshold bounds (value_label); null: not judged",
    )
    value_label: str = Field("statistic", description="What value is: p-value, effect size, statistic, ...")
    threshold: list[float | None]
    threshold_kind: ThresholdKind = Field(
        "threshold",
        description="min_effect_size: the statistic is the effect size and the line its minimum, not a"
        " breach line (a point above it is ok when its p-value is not significant)",
    )
    threshold_label: str = "threshold"
    p_value: list[float | None]
    effect_size: list[float | None]
    verdict: list[Shown] = Field(description="Per point: its verdict, or not judged (too few samples)")
    note: list[str | None] = Field(
        default_factory=list, description="Per point: not judged (24 < 30 samples), revised 2x, or null"
    )
    revision: list[int] = Field(
        default_factory=list, description="Per point: its verdict's revision (0: first)"
    )
    windows: int = Field(0, description="Distinct windows with a point (judged or not)")
    drift_windows: int = Field(0, description="Distinct windows with a drift verdict")
    warning_windows: int = Field(0, description="Distinct windows whose worst verdict is a warning")
    not_judged_windows: int = Field(0, description="Distinct windows with too few samples to judge")
    revised_windows: int = Field(0, description="Distinct windows whose verdict late events revised")
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


def not_judged_note(samples: Any, min_samples: Any) -> str:
    """Why a window has no verdict: ``not judged (24 < 30 samples)``."""
    if pd.isna(samples) or pd.isna(min_samples):
        return "not judged (too few samples)"
    return f"not judged ({int(samples)} < {int(min_samples)} samples)"


def detector_series(
    frame: pd.DataFrame, labels: Mapping[str, str], is_rate: Callable[[str], bool]
) -> list[DetectorSeries]:
    """One series per (detector, config) of a segment's detections (columns of the history table).

    ``frame`` holds the latest revision of each window's verdict per config only
    (:func:`services.console.views.latest_revision_rows`).
    """
    series: list[DetectorSeries] = []
    if frame.empty:
        return series
    for column in ("revision", "judged", "samples", "min_samples", "threshold_of", "score"):
        if column not in frame.columns:
            frame = frame.assign(**{column: None})
    frame = frame.assign(config_id=frame["config_id"].fillna(""), revision=frame["revision"].fillna(0))
    frame = frame.sort_values(["detector_id", "config_id", "window_start"])
    groups = list(frame.groupby(["detector_id", "config_id"], sort=True))
    per_detector = pd.Series([str(d) for (d, _), _ in groups]).value_counts()
    for (detector_id, config), group in groups:
        label = labels.get(str(config), "")
        if not label and per_detector[str(detector_id)] > 1:
            label = f"config {config}"  # unknown to this console, but still told apart
        judged = [j is None or bool(j) for j in group["judged"]]  # null: written before, judged
        measurements: dict[str, list[float | None]] = {}
        if str(detector_id).startswith("quality."):
            parsed = [
                json.loads(m) if m and j else {} for m, j in zip(group["measurements"], judged, strict=True)
            ]
            names = sorted({k for m in parsed for k in m if is_rate(k)})
            measurements = {k: [_num(m.get(k)) for m in parsed] for k in names}
        kind, value_label, values = _scale(group)
        verdicts: list[Shown] = [
            v if j else "not judged" for v, j in zip(group["verdict"], judged, strict=True)
        ]
        revisions = [int(r) for r in group["revision"]]
        notes = [
            (None if j else not_judged_note(n, m))
            if not r
            else f"revised {r}x" + ("" if j else ", not judged")
            for j, n, m, r in zip(judged, group["samples"], group["min_samples"], revisions, strict=True)
        ]
        worst = group.assign(
            rank=[_RANK.get(v, 0) if j else -1 for v, j in zip(group["verdict"], judged, strict=True)]
        )
        worst = worst.groupby("window_start")["rank"].max()
        series.append(
            DetectorSeries(
                detector_id=str(detector_id),
                config_ids=[str(config)] if config else [],
                config_label=label,
                config_id=[str(config) or None] * len(group),
                window_start=list(group["window_start"]),
                statistic=[_num(v) if j else None for v, j in zip(group["statistic"], judged, strict=True)],
                value=[v if j else None for v, j in zip(values, judged, strict=True)],
                value_label=value_label,
                threshold=[_num(v) for v in group["threshold"]],
                threshold_kind=kind,
                threshold_label=THRESHOLD_LABELS[kind],
                p_value=[_num(v) for v in group["p_value"]],
                effect_size=[_num(v) for v in group["effect_size"]],
                verdict=verdicts,
                note=notes,
                revision=revisions,
                windows=int(worst.size),
                drift_windows=int((worst == 2).sum()),
                warning_windows=int((worst == 1).sum()),
                not_judged_windows=int((worst == -1).sum()),
                revised_windows=int(group.loc[group["revision"] > 0, "window_start"].nunique()),
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


def _scale(group: pd.DataFrame) -> tuple[ThresholdKind, str, list[float | None]]:
    """The threshold's kind, what is drawn against it and its values, per point on that point's scale."""
    scales = group["threshold_of"]
    known = scales[scales.isin(list(SCALES))]
    if known.empty:
        kind = _threshold_kind(group)  # rows written before threshold_of: as before
        return kind, "statistic", [_num(v) for v in group["statistic"]]
    # One detector can bound different fields per window (cost: alpha, or an SLO on its statistic).
    counts = known.value_counts()
    main = SCALES[str(counts.index[0])]
    picked = pd.Series(np.nan, index=group.index)
    for name in counts.index:
        column, _, _ = SCALES[str(name)]
        rows = scales == name if name != counts.index[0] else ~scales.isin(list(counts.index[1:]))
        picked[rows] = pd.to_numeric(group.loc[rows, column], errors="coerce")
    labels = sorted(SCALES[str(name)][2] for name in counts.index)
    return main[1], " / ".join(labels), [_num(v) for v in picked]


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
