"""The Segment page's Evidently reports: one link per window, beside what drifted in it.

The detect stage renders one report per window whose columns drifted, and every detection of
that window names it. Trial 18: the page listed every report under every detector, the ok ones
too, so one window's link stood fourteen times. Each window is listed once, with the detectors
that drifted or warned in it, and only where one did (the report is what explains that verdict).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from services.console.series import DetectorSeries

_SEVERITY = {"warning": 1, "drift": 2}


class WindowReport(BaseModel):
    """One window's Evidently report and what it explains."""

    window_start: datetime
    detection_id: str = Field(description="A detection naming the report (the link opens it)")
    verdict: Literal["warning", "drift"] = Field(description="The worst verdict of the detectors below")
    detectors: list[str] = Field(
        description="The detectors (and configs) that drifted or warned in this window, worst first"
    )


def window_reports(series: list[DetectorSeries]) -> list[WindowReport]:
    """Each window with a report and a drift or warning verdict, once, newest first."""
    first: dict[datetime, str] = {}
    named: dict[datetime, dict[str, int]] = {}
    for s in series:
        name = f"{s.detector_id} · {s.config_label}" if s.config_label else s.detector_id
        verdicts = dict(zip(s.window_start, s.verdict, strict=True))
        for link in s.reports:
            first.setdefault(link.window_start, link.detection_id)
            severity = _SEVERITY.get(verdicts.get(link.window_start, ""), 0)
            if severity:
                seen = named.setdefault(link.window_start, {})
                seen[name] = max(severity, seen.get(name, 0))
    reports = []
    for start in sorted(named, reverse=True):
        ranked = sorted(named[start].items(), key=lambda item: (-item[1], item[0]))
        worst: Literal["warning", "drift"] = "drift" if ranked[0][1] == 2 else "warning"
        reports.append(
            WindowReport(
                window_start=start,
                detection_id=first[start],
                verdict=worst,
                detectors=[name for name, _ in ranked],
            )
        )
    return reports
