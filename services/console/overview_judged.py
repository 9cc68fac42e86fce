"""What the Overview says of the detectors that did not judge a segment's windows, counted per detector.

Trial 12k: canary c2's feedback came 6 to 28 thumbs a window, under the feedback detectors' 30, so
``quality.negative_feedback.v1`` judged none of its 9 windows while the drift detectors judged some
``ok``: the Overview read ``worst verdict ok`` and counted 2 windows not judged (those no detector
judged), where the Segment page said 7 of 8 for the drift detectors and 9 of 9 for the feedback one.
Its 95 thumbs had 89 down: the user needs that rate, though no window alone could be judged.

Here a detector's window is not judged when none of its configs judged it (latest revision): what its
section on the Segment page counts. Detectors the segment never fed (``no input sent``: 0 samples in
windows with events, :func:`services.console.unjudged.never_judged_ids`) are left out. Detectors with
equal counts are said together, per the window kind they read. One with input that judged none of its
windows is named with the numbers the history holds: a rate detector's window too small to judge keeps
its hits beside its samples (``current_hits``, ``reference_hits``), so the Overview pools them:
``89 of 95 thumbs down (94%) in all``. Windows written before they were kept have sample counts only:
no rate is said then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from services.console.overview_rates import (
    QUALITY_IDS,
    QualityRate,
    quality_rates,
    split_own,
    stable_of,
    version_of,
    with_measured,
)
from services.console.overview_verdicts import latest_revision_rows, one_per_detection, reading_order
from services.console.reader import HistoryReader
from services.console.series import judged_mask
from services.console.slow_reach import SlowReach, reach_said, windows_said
from services.console.unjudged import worse_rate
from services.console.window_close import KINDS
from services.console.window_counts import (
    WindowCounts,
    of_kind,
    percent,
    pooled_hits,
    pooled_mean,
    pooled_reference,
    short_side,
    shortfall_said,
)
from streams.detect import DEFAULT_SPECS

#: The window kind each built-in detector reads (the console's detectors file may say otherwise).
BUILT_IN_KINDS = {spec.detector_id: spec.kind for spec in DEFAULT_SPECS}
#: The kind of a detector neither the console's detectors file nor the built-in set names.
OTHER = "other"
#: What the history's detections need for these counts (besides ``judged_mask``'s columns).
COLUMNS = ["segment", "detector_id", "window_start", "samples", "current_size"]
#: Why no rate is given: a history written before too-small windows kept their hits has sample counts only.
NO_RATE = "a window too small to judge keeps its sample counts only"
#: What a rate detector's hits are, said after ``89 of 95`` (a detector not named here: ``hits``).
HITS_SAID = {
    "quality.negative_feedback.v1": "thumbs down",
    "quality.canary.v1": "thumbs down",
    "quality.correction_rate.v1": "feedback events were corrections",
    "quality.error_rate.v1": "requests failed",
    "quality.empty_refusal.v1": "replies empty or a refusal",
    "toxicity.profanity.v1": "texts profane",
    "toxicity.detoxify.v1": "texts toxic",
}
#: A mean detector's measure, said instead of a rate: ``mean rating 3.1 of 290 vs 4.2 on the reference``.
MEAN_SAID = {"quality.rating.v1": "ratings"}
#: Why no mean rating is given: what the history lacks, and what the detector should write.
NO_MEAN = (
    "no mean rating: a window too small to judge records how many ratings it had, not their sum"
    " (current_sum and reference_sum are not in its measurements)"
)
#: The check whose counts a detector of several checks keeps for the Overview (its measurements are
#: prefixed by check name: ``negative_feedback.current_hits``); others: the check that decided.
HITS_PART = {"quality.canary.v1": "negative_feedback"}
#: The columns read again, for one segment's detectors that judged nothing, to say their numbers.
DETAIL_COLUMNS = [
    "window_start",
    "detector_id",
    "config_id",
    "revision",
    "samples",
    "min_samples",
    "reference_size",
    "current_size",
    "reference",
    "measurements",
]


class NotJudged(BaseModel):
    """Detectors of one kind that left the same number of a segment's windows not judged."""

    kind: str = Field(description="The window kind they read: inference, feedback (other: not known)")
    not_judged: int = Field(description="Windows none of each one's configs judged (too few samples)")
    windows: int = Field(description="Windows each one had a detection for (judged or not)")
    detectors: list[str]
    of: int = Field(description="Detectors of this kind the segment fed (no input sent: not counted)")


class UnjudgedInput(BaseModel):
    """A detector that had input but judged none of the segment's windows in view, with its numbers."""

    detector_id: str
    kind: str
    kind_unjudged: bool = Field(False, description="No fed detector of its kind judged a window either")
    windows: int
    most_samples: int | None = Field(None, description="The most samples a window had, on the short side")
    min_samples: int | None = Field(None, description="The samples it needs to judge a window")
    short_side: str = Field(description="Which side fell short: this version's window, its reference, either")
    samples: int | None = Field(None, description="This version's samples summed over those windows")
    hits: int | None = Field(
        None,
        description="This version's hits (thumbs down, errors...) summed over those windows; null when a"
        " window was written without them (histories before too-small windows kept their hits)",
    )
    reference_hits: int | None = Field(
        None, description="The hits of the references those windows were compared with (each counted once)"
    )
    reference_samples: int | None = Field(None, description="The samples of those references")
    shortfall: str = Field(
        description="Why no window was judged: too few samples in each window, at most 28 < 30"
    )
    rate_said: str | None = Field(
        None,
        description="The pooled rate in words, when the hits were kept: 89 of 95 thumbs down (94%) vs 10%"
        " on the reference (v2's first window)",
    )
    note: str = Field(description="What the Overview says: feedback not judged in any of 9 windows (...)")


class JudgedScope(BaseModel):
    """What judged a segment's verdicts on the Overview: fields of its row (and of ``/api/overview``)."""

    worst_shown: str | None = Field(
        None,
        description="The worst verdict as the page says it, led by what was not judged: feedback not"
        " judged: 89 of 95 thumbs down (94%) vs 10% on the reference (v2's first window); ok (inference"
        " detectors only)",
    )
    worst_lead: str | None = Field(
        None,
        description="What leads the worst verdict when a detector with input judged no window: the most"
        " telling of ``unjudged_inputs``, its pooled rate when the history kept its hits",
    )
    worst_judged: str | None = Field(
        None,
        description="The worst verdict of the windows judged, after the lead: ok (inference detectors only)",
    )
    verdict_scope: str | None = Field(
        None,
        description="What judged the verdicts, when a detector with input judged no window in view, short:"
        " inference detectors only; 2 of 8 inference detectors judged no window (their ids: unjudged_inputs)",
    )
    not_judged: list[NotJudged] = Field(
        default_factory=list,
        description="Per kind, the windows its fed detectors did not judge, each counted as the Segment"
        " page counts that detector's (equal counts together; detectors never fed left out)",
    )
    not_judged_said: str | None = Field(
        None, description="What the page says of them: 7 of 8 windows by the 2 inference detectors; ..."
    )
    unjudged_inputs: list[UnjudgedInput] = Field(
        default_factory=list, description="Detectors with input that judged none of the windows in view"
    )
    quality: list[QualityRate] = Field(
        default_factory=list,
        description="Pooled quality rates (errors, empty or refusal replies, latency p95) beside the"
        " stable version's",
    )
    quality_said: str | None = Field(
        None, description="What the page says of them: errors 5% (12 of 240) vs 0% on v1 (stable); ..."
    )


@dataclass(frozen=True)
class _Counted:
    """One detector's windows on one segment, and whether the segment fed it."""

    detector_id: str
    kind: str
    windows: int
    not_judged: int
    fed: bool


@dataclass(frozen=True)
class SegmentJudged:
    """One segment's fed detectors (their kinds) and those that left windows not judged."""

    fed: dict[str, str]
    counts: list[NotJudged]

    def judged_none(self) -> dict[str, str]:
        """The fed detectors that judged none of their windows, and their kinds."""
        return {d: r.kind for r in self.counts if r.not_judged == r.windows for d in r.detectors}

    def unjudged_kinds(self) -> set[str]:
        """The kinds none of whose fed detectors judged a window."""
        none = set(self.judged_none())
        return {
            kind for kind in set(self.fed.values()) if {d for d, k in self.fed.items() if k == kind} <= none
        }

    def said(
        self, slow: frozenset[str] = frozenset(), reach: Mapping[str, SlowReach] | None = None
    ) -> str | None:
        """``7 of 8 inference windows by the 2 inference detectors; 9 of 9 feedback windows by
        quality.negative_feedback.v1``
        (``slow``: the slow detectors, whose windows not reached are not counted; ``reach``: why not)."""
        said = []
        for r in self.counts:
            fed = [d for d, kind in self.fed.items() if kind == r.kind]
            # Of its kind's windows: "4 of 4 windows" beside a segment of 5 read as a miscount (trial 12u).
            of = windows_said(r.windows, r.kind if r.kind in KINDS else "")
            said.append(f"{r.not_judged} of {of} by {_who(r, fed, slow, reach)}")
        return "; ".join(said) or None

    def scope(self, led: str | None = None) -> str | None:
        """What the verdicts were judged by, when a fed detector judged no window, short enough to follow
        a verdict: ``inference detectors only; 2 of 8 inference detectors judged no window``.

        Several detectors of a kind are counted, not named (trial 12m: seven ids made the verdict
        unreadable; the Overview's lines below name them). ``led`` is the detector the verdict's lead
        names: neither it nor the kinds not judged are said again (trial 12q: ``drift: quality.latency.v1
        on 1 window (quality.negative_feedback.v1 judged no window)`` followed a lead that said it).
        """
        none, whole = self.judged_none(), self.unjudged_kinds()
        judged = {kind for detector, kind in self.fed.items() if detector not in none}
        lone: dict[str, list[str]] = {}
        for detector, kind in sorted(none.items()):
            if kind not in whole and detector != led:
                lone.setdefault(kind, []).append(detector)
        if not judged or not (whole or lone):
            return None
        parts = []
        if whole:
            only = f"{_kinds(judged - whole)} detectors only"
            parts.append(only if led is not None else f"{only}; {_kinds(whole)} not judged")
        for kind in sorted(lone, key=_kind_order):
            ids, of = lone[kind], sum(1 for k in self.fed.values() if k == kind)
            who = ids[0] if len(ids) == 1 else f"{len(ids)} of {of} {kind} detectors"
            parts.append(f"{who} judged no window")
        return "; ".join(parts)


def judged_per_segment(detections: pa.Table, kinds: Mapping[str, str]) -> dict[str, SegmentJudged]:
    """Per segment: its fed detectors, and those that left windows not judged (by kind, equal counts).

    ``detections`` holds the latest revision of each window's verdict (any segments); ``kinds`` names
    the window kind each detector reads.
    """
    out: dict[str, SegmentJudged] = {}
    for segment, mine in _per_detector(detections, kinds).items():
        fed = [c for c in mine if c.fed]
        groups: dict[tuple[str, int, int], list[str]] = {}
        for c in fed:
            if c.not_judged:
                groups.setdefault((c.kind, c.not_judged, c.windows), []).append(c.detector_id)
        of = {kind: sum(1 for c in fed if c.kind == kind) for kind in {c.kind for c in fed}}
        rows = [
            NotJudged(kind=kind, not_judged=n, windows=w, detectors=sorted(ids), of=of[kind])
            for (kind, n, w), ids in groups.items()
        ]
        # One order on every version, to scan across them: kind, then the detectors' reading order.
        rows.sort(key=lambda r: (_kind_order(r.kind), [reading_order(d) for d in r.detectors]))
        out[segment] = SegmentJudged({c.detector_id: c.kind for c in fed}, rows)
    return out


def _per_detector(detections: pa.Table, kinds: Mapping[str, str]) -> dict[str, list[_Counted]]:
    """Per segment: each detector's windows and those it judged, with Arrow's hash aggregations.

    A window is judged by a detector when one of its configs judged it: its windows judged are the
    distinct windows of its judged rows (two aggregations on two keys, not one on three: 3x faster).
    """
    if detections.num_rows == 0:
        return {}
    keys = ["segment", "detector_id"]
    rows = detections.select(COLUMNS)
    every = rows.group_by(keys, use_threads=False).aggregate(
        [("window_start", "count_distinct"), ("samples", "max"), ("current_size", "max")]
    )
    judged = rows.filter(judged_mask(detections)).group_by(keys, use_threads=False)
    counted = every.join(
        judged.aggregate([("window_start", "count_distinct")]).rename_columns([*keys, "judged"]),
        keys,
        join_type="left outer",
        use_threads=False,
    )
    out: dict[str, list[_Counted]] = {}
    for row in counted.to_pylist():
        windows = row["window_start_count_distinct"]
        not_judged = windows - (row["judged"] or 0)
        # As never_judged_ids: no verdict, no sample in any window, and windows that held events.
        unfed = not row["judged"] and not row["samples_max"] and (row["current_size_max"] or 0) > 0
        detector = str(row["detector_id"])
        out.setdefault(row["segment"], []).append(
            _Counted(detector, kinds.get(detector, OTHER), windows, not_judged, not unfed)
        )
    return out


def _kind_order(kind: str) -> tuple[int, str]:
    return ({"inference": 0, "feedback": 1}.get(kind, 2), kind)


def _kinds(kinds: set[str]) -> str:
    """``inference and feedback``, in that order."""
    return " and ".join(sorted(kinds, key=_kind_order))


def _who(
    row: NotJudged,
    fed: Sequence[str] = (),
    slow: frozenset[str] = frozenset(),
    reach: Mapping[str, SlowReach] | None = None,
) -> str:
    """``drift.embedding_mmd.v1``, ``the 6 inference detectors``, ``7 of 8 inference detectors (all but
    drift.embedding_mmd.v1)``: one detector is named, and so is the one left out (``fed``: the detectors
    of the row's kind). Trial 12n read ``1 of 9 windows by 1 of 8 inference detectors`` as a riddle."""
    kind = f"{row.kind} "
    others = sorted(set(fed) - set(row.detectors))
    if len(row.detectors) == 1:
        who = row.detectors[0]
    elif len(row.detectors) == row.of:
        who = f"the {row.of} {kind}detectors"
    else:
        who = f"{len(row.detectors)} of {row.of} {kind}detectors"
        who += f" (all but {others[0]})" if len(others) == 1 else ""
    if set(row.detectors) <= slow:
        # Its count is of the windows it reached: the rest were skipped or wait in the slow queue.
        who += reach_said(
            row.windows, (reach or {}).get(row.detectors[0]) if len(row.detectors) == 1 else None
        )
    return who


def unjudged_rows(
    history: HistoryReader,
    days: Sequence[date],
    judged: Mapping[str, SegmentJudged],
    detections: pa.Table | None = None,
) -> dict[str, pa.Table]:
    """Per segment: its latest detections of the fed detectors that judged no window and of the quality
    rate detectors, with their measurements, and the quality rows of the stable segment it was compared
    with; the table's ``segment`` metadata names whose it is (:func:`judged_scope` splits it).
    ``detections``: the days' detections (with :data:`DETAIL_COLUMNS`) when the caller read them already."""
    wanted = {s: {*j.judged_none(), *(QUALITY_IDS & set(j.fed))} for s, j in judged.items()}
    rows = detector_rows(history, days, wanted, detections)
    out = {}
    for segment, mine in rows.items():
        stable = stable_of(rows, segment)
        if stable in rows:
            theirs = rows[stable]
            mine = pa.concat_tables([mine, theirs.filter(pc.is_in(theirs["detector_id"], _QUALITY))])
        out[segment] = mine.replace_schema_metadata({"segment": segment})
    return out


_QUALITY = pa.array(sorted(QUALITY_IDS), pa.string())


def detector_rows(
    history: HistoryReader,
    days: Sequence[date],
    wanted: Mapping[str, set[str]],
    detections: pa.Table | None = None,
) -> dict[str, pa.Table]:
    """Per segment of ``wanted``: the latest detections of its detectors there, with their measurements
    (what :func:`unjudged_input` reads; the Incidents page's rules read them too), from ``detections``
    (the days' rows with these columns) or else read."""
    wanted = {segment: ids for segment, ids in wanted.items() if ids}
    models = {segment.split("|", 1)[0] for segment in wanted}  # model|version|app|route|tenant
    # Their models' partitions in one scan, judged together: read, deduplicated and revised model by
    # model, 50 segments cost the Overview more than their rows did (trial 22).
    columns = ["segment", "detection_id", *DETAIL_COLUMNS]
    rows = (
        history.read("detections", days, models=models, columns=columns) if detections is None else detections
    )
    rows = rows.select(columns)
    rows = one_per_detection(rows)  # a verdict published twice (kill -9) pooled once
    pairs = pa.array([f"{segment}\0{i}" for segment, ids in wanted.items() for i in ids], pa.string())
    rows = rows.filter(
        pc.is_in(pc.binary_join_element_wise(rows["segment"], rows["detector_id"], "\0"), pairs)
    )
    if rows.num_rows and pc.max(rows["revision"]).as_py():
        rows = latest_revision_rows(rows)
    # Sorted by segment (a stable sort: each segment's rows keep their order), then sliced: filtering
    # the whole table once per segment cost more than the rows did.
    rows = with_measured(rows.take(pc.sort_indices(rows["segment"])))
    out = {segment: rows.slice(0, 0) for segment in wanted}
    start = 0
    for counted in pc.value_counts(rows["segment"]).to_pylist():  # in the order of first appearance
        out[counted["values"]] = rows.slice(start, counted["counts"])
        start += counted["counts"]
    return out


def judged_scope(
    judged: SegmentJudged | None,
    worst: str | None,
    rows: pa.Table | None,
    slow: frozenset[str] = frozenset(),
    reach: Mapping[str, SlowReach] | None = None,
) -> JudgedScope:
    """A segment's row fields: its not-judged counts and, for each fed detector that judged no window,
    its numbers from ``rows`` (:func:`unjudged_rows`); ``slow``: the slow detectors, said as such
    (``reach``: the windows each has not reached, skipped or still queued)."""
    if judged is None:
        return JudgedScope(worst_shown=worst, worst_judged=worst)
    whole = judged.unjudged_kinds()
    own, stable = split_own(rows)
    nones = sorted(
        judged.judged_none().items(), key=lambda item: (_kind_order(item[1]), reading_order(item[0]))
    )
    inputs = [
        unjudged_input(
            own.filter(pc.equal(own["detector_id"], detector_id)), detector_id, kind, kind in whole
        )
        for detector_id, kind in nones
        if own is not None
    ]
    rates = quality_rates(own, stable, version_of(stable)) if own is not None else []
    # Only a rate worse than its reference's leads (bold): a healthy stable's 0 of 174 thumbs down led
    # like the bad canary's 172 of 172 (trial 12n). The rest is said by the scope and the lines below.
    first = lead_input([u for u in inputs if worse_than_reference(u)])
    lead = _lead(first) if first is not None else None
    scope = judged.scope(led=first.detector_id if first is not None else None)
    shown = f"{worst} ({scope})" if worst and scope else worst
    return JudgedScope(
        worst_shown=f"{lead}; {shown}" if lead and shown else lead or shown,
        worst_lead=lead,
        worst_judged=shown,
        verdict_scope=scope,
        not_judged=judged.counts,
        not_judged_said=judged.said(slow, reach),
        unjudged_inputs=inputs,
        quality=rates,
        quality_said="; ".join(r.said for r in rates) or None,
    )


def judged_none_said(
    history: HistoryReader,
    days: Sequence[date],
    wanted: Mapping[str, set[str]],
    names: Mapping[str, str],
    kinds: Mapping[str, str] = BUILT_IN_KINDS,
) -> list[str]:
    """Per segment of ``wanted`` (its detectors that judged none of its windows), in words with the
    pooled numbers the Overview gives (``names``: how to call each segment, e.g. its version):
    ``quality.negative_feedback.v1 judged none of r3's 6 windows (too few samples in each window, at
    most 25 < 30); r3 had 105 of 119 thumbs down (88%) vs 13% on the reference (r1, stable)``.

    Segments said alike are said once (``r1's and r2's 6 windows``); a worse rate, then any rate first.
    """
    rows = detector_rows(history, days, wanted)
    alike: dict[tuple[tuple[tuple[int, str, str], ...], str | None], list[str]] = {}
    worse: dict[tuple[tuple[tuple[int, str, str], ...], str | None], bool] = {}
    for segment in sorted(rows):
        mine = rows[segment]
        inputs = [
            unjudged_input(mine.filter(pc.equal(mine["detector_id"], d)), d, kinds.get(d, OTHER), False)
            for d in sorted(wanted[segment])
        ]
        groups: dict[tuple[int, str], list[str]] = {}
        for u in inputs:
            if u.windows:
                groups.setdefault((u.windows, u.shortfall), []).append(u.detector_id)
        if groups:
            lead = lead_input(inputs)
            said = tuple((n, why, " and ".join(ids)) for (n, why), ids in groups.items())
            rate = lead.rate_said if lead is not None else None
            alike.setdefault((said, rate), []).append(names.get(segment, segment))
            worse[(said, rate)] = worse.get((said, rate), False) or any(map(worse_than_reference, inputs))
    out = []
    # A rate worse than its reference's first (trial 12n: the healthy stable's 0% came before 100%).
    for (said, rate), who in sorted(alike.items(), key=lambda item: (not worse[item[0]], item[0][1] is None)):
        whose = _listed([f"{name}'s" for name in who])
        clauses = [
            f"{ids} judged none of {whose} {n} windows ({why})"
            if n > 1
            else f"{ids} did not judge {whose} one window ({why})"
            for n, why, ids in said
        ]
        if rate:
            clauses.append(
                f"{_listed(who)} had {rate}" if len(who) == 1 else f"{_listed(who)} each had {rate}"
            )
        out.append("; ".join(clauses))
    return out


def _listed(items: Sequence[str]) -> str:
    """``r1, r2 and r3``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def lead_input(inputs: Sequence[UnjudgedInput]) -> UnjudgedInput | None:
    """The input that leads what the page says: of a kind nothing judged first, then one with a pooled
    rate, then the detectors in :data:`HITS_SAID`'s order (thumbs down before errors), then by id."""
    order = {detector_id: n for n, detector_id in enumerate(HITS_SAID)}
    ranked = sorted(
        inputs,
        key=lambda u: (
            not u.kind_unjudged,
            u.rate_said is None,
            order.get(u.detector_id, len(order)),
            u.detector_id,
        ),
    )
    return ranked[0] if ranked else None


def worse_than_reference(unjudged: UnjudgedInput) -> bool:
    """Whether its pooled rate is worse than its reference's (no reference rate: any hit at all)."""
    u = unjudged
    return worse_rate(u.hits, u.samples, u.reference_hits, u.reference_samples)


def _lead(unjudged: UnjudgedInput) -> str:
    """``feedback not judged: 105 of 119 thumbs down (88%) vs 13% on the reference (r1, stable)``."""
    kind, detector = unjudged.kind, unjudged.detector_id
    who = f"{kind} not judged" if unjudged.kind_unjudged else f"{detector} judged no window"
    return f"{who}: {unjudged.rate_said}" if unjudged.rate_said else f"{who} ({unjudged.shortfall})"


def _mean_said(windows: list[WindowCounts], detector_id: str, total: int, kind: str) -> str:
    """``mean 3.1 over 290 ratings in all, vs 4.2 on the reference (...)``, or what the history lacks."""
    what = MEAN_SAID[detector_id]
    pooled = pooled_mean(windows)
    if pooled is None:
        return f"{total} {what} in all; {NO_MEAN}"
    said = f"mean {pooled[0]:.2f} over {total} {what} in all"
    if pooled[1] is None:
        return f"{said}; no reference mean (its reference's ratings' sum is not in the history)"
    references = [w.reference_id for w in windows]
    return f"{said}, vs {pooled[1]:.2f} on the {of_kind(list(dict.fromkeys(references)), kind)}"


def unjudged_input(rows: pa.Table, detector_id: str, kind: str, whole_kind: bool) -> UnjudgedInput:
    """What the Overview says of ``detector_id``, which judged none of its windows (``rows``: its latest
    detections on the segment): its samples and, when every window kept them, its hits pooled."""
    per_window: dict[object, WindowCounts] = {}
    needs = []
    for row in rows.to_pylist():
        counted = WindowCounts.of(row, HITS_PART.get(detector_id))
        known = per_window.get(row["window_start"])
        per_window[row["window_start"]] = counted if known is None else known.merged(counted)
        needs.append(row["min_samples"] or 0)
    need = max(needs, default=0) or None
    windows = list(per_window.values())
    currents = [w.current for w in windows]
    side, most = short_side(currents, [w.reference for w in windows], need)
    total = sum(currents) if windows else None
    shortfall = shortfall_said(side, most, need)
    plural = "" if len(windows) == 1 else "s"
    lead = (
        f"{kind} not judged in {'any of ' if len(windows) != 1 else ''}{windows_said(len(windows))}"
        f" ({detector_id}: {shortfall})"
        if whole_kind
        else f"{detector_id} judged none of its {len(windows)} {kind} window{plural} ({shortfall})"
    )
    hits = pooled_hits(windows)
    reference = pooled_reference(windows) if hits is not None else None
    rate_said = None
    if detector_id in MEAN_SAID:
        said = _mean_said(windows, detector_id, total or 0, kind)
    elif hits is None or not total:
        said = f"{total} samples in all; no rate ({NO_RATE})"
    else:
        rate_said = f"{hits} of {total} {HITS_SAID.get(detector_id, 'hits')} ({percent(hits, total)})"
        said = f"{rate_said} in all"
        if reference is not None and reference[1]:
            versus = f"vs {percent(reference[0], reference[1])} on the {of_kind(reference[2], kind)}"
            said, rate_said = f"{said}, {versus}", f"{rate_said} {versus}"
    return UnjudgedInput(
        detector_id=detector_id,
        kind=kind,
        kind_unjudged=whole_kind,
        windows=len(windows),
        most_samples=most,
        min_samples=need,
        short_side=side,
        samples=total,
        hits=hits,
        reference_hits=reference[0] if reference else None,
        reference_samples=reference[1] if reference else None,
        shortfall=shortfall,
        rate_said=rate_said,
        note=f"{lead}: {said}",
    )
