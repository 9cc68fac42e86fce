"""Window summaries that merge: how detection scales out over partitions and workers.

Each ingest batch folds the rows it saw into one :class:`Partial` per
(segment, kind, window) — an exact count plus a bounded uniform sample —
and publishes it on the summaries topic keyed by segment. Whoever owns that
segment's partition merges the partials (:class:`Windows`) and closes a
window when enough time or enough events have passed; the detectors then
run on the merged sample. Partials go out with the batch's other outputs,
before its offsets are committed, so no event is missing from its window.

Samples merge exactly because every event draws one random key, wherever
it is counted, and a sample is "the events whose key is above a floor"
(a bottom-k sketch): the union of two such samples, cut at the higher
floor, is again one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from core.settings import Settings
from streams.watermarks import Marks, Source, source_of
from streams.window_dedup import Coverage, Origin, drop_counted
from streams.window_gaps import Gaps
from streams.window_sample import Sample

WindowKind = Literal["inference", "feedback"]


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling windows by event time (``seconds``) or by event count (``events``)."""

    seconds: float | None = 60.0
    events: int | None = None
    sample_size: int = 2_000
    #: Allowed lateness in event time (watermark rule), or the quiet time after a last partial (timer).
    grace_seconds: float = 5.0
    idle_seconds: float = 30.0
    #: When a time window is complete: by its sources' watermarks, or by the timer rule (:class:`Windows`).
    close: Literal["watermark", "timer"] = "timer"
    #: A closed time window is kept this long (wall time) so that late partials revise it (0: never).
    revision_seconds: float = 0.0
    #: A revision waits until no late partial came for it for this long (wall time): one late
    #: delivery read in several batches is one revision; so does a window that late partials opened.
    revision_quiet_seconds: float = 0.0
    #: The feedback topic: its sources hold back feedback windows only (inference is counted elsewhere).
    feedback_topic: str | None = None
    #: Sources every summaries partition waits for, heard or not (:class:`~streams.watermarks.Marks`).
    sources: tuple[Source, ...] = ()

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.events is None):
            raise ValueError("a window is tumbling by time or by count: set exactly one of seconds, events")

    def window_id(self, timestamp: float) -> int:
        """Which tumbling time window a timestamp falls in (0 for count windows)."""
        return int(timestamp // self.seconds) if self.seconds else 0


@dataclass
class Partial:
    """What one batch (or many, merged) saw of one segment's window."""

    segment: dict[str, str | None]
    kind: WindowKind
    window_id: int
    first_seen: float
    last_seen: float
    sample: Sample
    #: The watermarks of the sources of the batch that made it (:mod:`streams.watermarks`); not merged.
    progress: dict[Source, float] = field(default_factory=dict)
    #: The offsets of the events it counted, per source, as runs (:mod:`streams.window_dedup`); not merged.
    counted: dict[Source, list[list[int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the value on the summaries topic)."""
        extra: dict[str, Any] = {"progress": self.progress} if self.progress else {}
        if self.counted:  # each entry's origin as [index of its source in counted, offset]: compact
            index = {source: at for at, source in enumerate(self.counted)}
            origins = [None if o is None else [index[o[0]], o[1]] for o in self.sample.origins]
            extra.update(counted=self.counted, origins=origins)
        return {
            **extra,
            "segment": self.segment,
            "kind": self.kind,
            "window_id": self.window_id,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "seen": self.sample.seen,
            "capacity": self.sample.capacity,
            "floor": self.sample.floor,
            "keys": [key for key, _ in self.sample.entries],
            "rows": [row for _, row in self.sample.entries],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partial:
        """Inverse of :meth:`to_json`."""
        entries = list(zip(data["keys"], data["rows"], strict=True))
        counted = dict(data.get("counted") or {})
        origins: list[Origin | None] | None = None
        if counted:
            sources = list(counted)
            origins = [None if o is None else (sources[o[0]], int(o[1])) for o in data["origins"]]
            if len(origins) != len(entries):
                raise ValueError(f"{len(origins)} origins for {len(entries)} sample entries")
        sample = Sample(data["capacity"], data["seen"], entries, data["floor"], origins)
        return cls(
            segment=data["segment"],
            kind=data["kind"],
            window_id=data["window_id"],
            first_seen=data["first_seen"],
            last_seen=data["last_seen"],
            sample=sample,
            progress=dict(data.get("progress") or {}),
            counted=counted,
        )

    def saw(self, timestamp: float) -> None:
        """Stretch the first and last event times to include ``timestamp`` (first <= last always)."""
        if timestamp < self.first_seen:
            self.first_seen = timestamp
        elif timestamp > self.last_seen:
            self.last_seen = timestamp

    def merge(self, other: Partial) -> None:
        """Fold another partial of the same window in."""
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_seen = max(self.last_seen, other.last_seen)
        self.sample.merge(other.sample)


#: The parts of a segment, in the order of its key.
SEGMENT_PARTS = ("model", "model_version", "app", "route", "tenant")


def segment_key(segment: dict[str, str | None]) -> str:
    """The Kafka key of a segment: model|version|app|route|tenant."""
    return "|".join(segment.get(part) or "" for part in SEGMENT_PARTS)


@dataclass(frozen=True)
class ClosedWindow:
    """A finished window of one segment, ready for the detectors."""

    segment: dict[str, str | None]
    kind: WindowKind
    start: datetime
    end: datetime
    seen: int
    rows: list[dict[str, Any]]
    #: The ids of the partials merged into it (their entries in the open-windows table).
    entries: tuple[str, ...] = ()
    #: 0 when it first closed; n once late partials (or its reference: ``closed_by="reference"``) revised
    #: it n times.
    revision: int = 0
    #: Its time window's id (None: a count window).
    window_id: int | None = None
    #: What closed it (watermark, idle_timeout, timer, count; revision: late partials; reference: judged
    #: again against its stable reference's newer window), and the input it waited for last.
    closed_by: str | None = None
    waited_for: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (a window kept until its slow detectors are done)."""
        return {
            "segment": self.segment,
            "kind": self.kind,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "seen": self.seen,
            "rows": self.rows,
            "revision": self.revision,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClosedWindow:
        """Inverse of :meth:`to_json`."""
        start, end = datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"])
        revision = int(data.get("revision", 0))
        return cls(data["segment"], data["kind"], start, end, data["seen"], data["rows"], revision=revision)


#: Where an open window is: (segment key, kind, window id).
Slot = tuple[str, WindowKind, int]
#: A stream of windows: (segment key, kind).
Stream = tuple[str, WindowKind]


@dataclass
class Done:
    """A closed time window kept for revisions: its merged state, when it closed, its revision."""

    partial: Partial
    closed_at: float
    revision: int = 0
    entries: list[str] = field(default_factory=list)
    #: What its first closing came to (judged, reference, waiting, skipped): a revision is judged only then.
    outcome: str = "judged"
    #: The reference its first verdict compared it with: a revision compares with the same one, not
    #: with whatever the reference is by then (a newer stable window may hold too few events to judge).
    reference: Any = None


class Windows:
    """Open windows per (segment, kind), merged from partials.

    A count window closes as soon as it has seen ``events`` events. A time
    window closes (``close="watermark"``) once every source heard on its
    summaries partition has passed its end plus ``grace_seconds``
    (:class:`~streams.watermarks.Marks`; sources quiet for ``idle_seconds``
    are left out), or (``close="timer"``) once its segment has moved on to a
    later window *and* no partial for it arrived for ``grace_seconds``. Any
    window closes after ``idle_seconds`` without a partial: its segment went quiet.

    A closed time window is kept for ``revision_seconds``: a partial for it
    is merged in, and :meth:`revisions` gives it back once per unit with its
    revision number. A window that closed without ever opening (a later one
    closed first) opens for a late partial within that horizon too
    (:mod:`streams.window_gaps`); such a window, and one whose watermarks had
    passed it before its first partial came, closes once no partial came for
    it for ``revision_quiet_seconds`` (its first verdict). Beyond it a partial for a closed window is
    late: not judged, and ``late_events`` counts its events.

    Each merged partial may carry an ``entry`` id (where the caller keeps it:
    the detect stage's open-windows table); a closed window lists its entries,
    and :meth:`restore` rebuilds open windows from kept partials after a restart.

    Events a window counted already (the same input offsets in an earlier
    partial: ingest read them twice) are taken out of a partial before it is
    merged, and counted in ``duplicate_events`` (:mod:`streams.window_dedup`);
    a partial with nothing new revises nothing.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.open: dict[Slot, Partial] = {}
        self.last_update: dict[Slot, float] = {}
        self.entries: dict[Slot, list[str]] = {}
        self.newest: dict[Stream, int] = {}
        self.closed_upto: dict[Stream, int] = {}
        self.late_events = 0
        self.marks = Marks(spec.grace_seconds, spec.idle_seconds, spec.sources)
        #: The summaries partition of each stream (whose marks judge its windows).
        self.partition: dict[Stream, int] = {}
        self.done: dict[Slot, Done] = {}
        #: Closed windows late partials were merged into, and when the last one came.
        self.revised: dict[Slot, float] = {}
        self.gaps = Gaps(spec.revision_seconds)
        #: Windows late partials opened (:mod:`streams.window_gaps`, or passed by the watermarks before
        #: their first partial came): they close once those went quiet (``revision_quiet_seconds``).
        self.reopened: set[Slot] = set()
        #: The input offsets each open or kept window counted (:mod:`streams.window_dedup`).
        self.coverage: dict[Slot, dict[Source, Coverage]] = {}
        #: Events of partials that a window had counted already (ingest read them twice): not counted again.
        self.duplicate_events = 0

    @staticmethod
    def slot(partial: Partial) -> Slot:
        """The open window a partial belongs to."""
        return (segment_key(partial.segment), partial.kind, partial.window_id)

    def is_late(self, partial: Partial) -> bool:
        """Whether ``partial`` is for a time window that has closed already (or that closing passed)."""
        # No default of -1: windows before 1970 have negative ids, and are not late.
        slot = self.slot(partial)
        closed_upto = self.closed_upto.get(slot[:2])
        late = closed_upto is not None and partial.window_id <= closed_upto and slot not in self.open
        return self.spec.seconds is not None and late

    def merges(self, partial: Partial) -> bool:
        """Whether ``partial`` is merged (into an open window, a closed one it revises, a gap it opens)."""
        slot = self.slot(partial)
        return not self.is_late(partial) or slot in self.done or self.gaps.opens(slot[:2], slot[2])

    def progress(self, partition: int, progress: dict[Source, float], now: float) -> bool:
        """Watermarks heard on a summaries partition; True when one moved."""
        return self.marks.observe(partition, progress, now)

    def add(
        self,
        partial: Partial,
        now: float,
        entry: str | None = None,
        partition: int | None = None,
        *,
        close: bool = True,
    ) -> list[ClosedWindow]:
        """Merge a partial (from summaries ``partition``); return the windows that are complete now.

        ``close=False`` merges only (during a rebalance nothing is closed).
        """
        slot = self.slot(partial)
        if partition is not None:
            self.partition[slot[:2]] = partition
            self.marks.observe(partition, partial.progress, now)
        if slot in self.done:
            self._revise(slot, partial, entry, now)
        elif not self.merges(partial):
            self.late_events += partial.sample.seen
        else:
            if self.is_late(partial) or (slot not in self.open and self._passed(slot, now)):
                self.reopened.add(slot)
            self.restore(partial, now, entry)
            if close and self.spec.events is not None and self.open[slot].sample.seen >= self.spec.events:
                return [self._close(slot, now), *self.tick(now)]
        return self.tick(now) if close else []

    def _revise(self, slot: Slot, partial: Partial, entry: str | None, now: float) -> None:
        done = self.done[slot]
        if entry is not None:
            done.entries.append(entry)
        if self._counted_already(slot, partial):
            return  # a replayed partial: no revision
        done.partial.merge(partial)
        self.revised[slot] = now

    def _counted_already(self, slot: Slot, partial: Partial) -> bool:
        """Drop the events ``slot`` counted already from ``partial``; True when none is left."""
        duplicates = drop_counted(partial, self.coverage.setdefault(slot, {}))
        self.duplicate_events += duplicates
        return duplicates > 0 and partial.sample.seen == 0

    def restore(self, partial: Partial, now: float, entry: str | None = None) -> Slot:
        """Merge a partial without closing anything (as :meth:`add` does, and after a restart)."""
        slot = self.slot(partial)
        stream = slot[:2]
        current = self.open.get(slot)
        if self._counted_already(slot, partial) and current is not None:
            if entry is not None:  # kept with the others: deleted when the window is
                self.entries.setdefault(slot, []).append(entry)
            return slot
        if current is None:
            empty = Sample(self.spec.sample_size)
            current = Partial(
                partial.segment, partial.kind, partial.window_id, partial.first_seen, partial.last_seen, empty
            )
            self.open[slot] = current
        current.merge(partial)
        self.last_update[slot] = now
        if entry is not None:
            self.entries.setdefault(slot, []).append(entry)
        self.newest[stream] = max(self.newest.get(stream, partial.window_id), partial.window_id)
        return slot

    def restore_done(self, slot: Slot, done: Done) -> None:
        """A closed window kept for revisions, as the table held it (its partials follow via :meth:`redo`)."""
        self.done[slot] = done

    def redo(self, partial: Partial, entry: str) -> None:
        """Merge a kept partial back into its closed window after a restart (no new revision)."""
        slot = self.slot(partial)
        done = self.done[slot]
        done.entries.append(entry)
        if not self._counted_already(slot, partial):
            done.partial.merge(partial)

    def forget(self, slot: Slot) -> None:
        """Drop an open window without judging it (its segment is merged by another worker now)."""
        self.open.pop(slot, None)
        self.last_update.pop(slot, None)
        self.entries.pop(slot, None)
        self.done.pop(slot, None)
        self.revised.pop(slot, None)
        self.reopened.discard(slot)
        self.coverage.pop(slot, None)

    def forget_partitions(self, partitions: set[int]) -> list[str]:
        """Drop every window and mark of ``partitions``; returns the entries they held."""
        streams = {stream for stream, partition in self.partition.items() if partition in partitions}
        entries: list[str] = []
        for slot in [s for s in [*self.open, *self.done] if s[:2] in streams]:
            entries += self.entries.get(slot, [])
            entries += self.done[slot].entries if slot in self.done else []
            self.forget(slot)
        for stream in streams:
            del self.partition[stream]
            self.gaps.forget(stream)
        self.marks.forget(partitions)
        return entries

    def tick(self, now: float) -> list[ClosedWindow]:
        """Close the windows that are complete (see the class docstring)."""
        why = {slot: by for slot, at in self.last_update.items() if (by := self._complete(slot, at, now))}
        # In order of time, then segment: a rollback watch takes a later window of the model as the
        # sign that every version's earlier windows are out (retrain_trigger.evidence).
        return [self._close(slot, now, *why[slot]) for slot in sorted(why, key=lambda s: (s[2], s[0], s[1]))]

    def _complete(self, slot: Slot, updated: float, now: float) -> tuple[str, str | None] | None:
        """What closes ``slot`` now and the input it waited for last (:meth:`Marks.closing`); None: open."""
        idle = now - updated >= self.spec.idle_seconds
        if slot in self.reopened and not idle:
            return ("revision", None) if now - updated >= self.spec.revision_quiet_seconds else None
        if self.spec.seconds is None or self.spec.close == "timer":
            timer = self.spec.seconds is not None and slot[2] < self.newest[slot[:2]]
            timer = timer and now - updated >= self.spec.grace_seconds
            return ("idle_timeout", None) if idle else ("timer", None) if timer else None
        end = (slot[2] + 1) * self.spec.seconds
        return self.marks.closing(self.partition.get(slot[:2]), end, now, self._ignore(slot), idle=idle)

    def _passed(self, slot: Slot, now: float) -> bool:
        """Whether the watermarks had passed ``slot`` before this unit: late partials open it (trial 17e)."""
        if self.spec.seconds is None or self.spec.close != "watermark":
            return False
        end = (slot[2] + 1) * self.spec.seconds
        return self.marks.passed(self.partition.get(slot[:2]), end, now, self._ignore(slot))

    def _ignore(self, slot: Slot) -> Callable[[Source], bool] | None:
        """The sources that cannot feed ``slot``: feedback for an inference window."""
        if slot[1] != "inference" or self.spec.feedback_topic is None:
            return None
        prefix = f"{self.spec.feedback_topic}|"
        return lambda source: source.startswith(prefix)

    def revisions(self, now: float | None = None) -> list[ClosedWindow]:
        """The closed windows late partials were merged into since the last call, each once.

        With ``now``, only those whose late partials went quiet (``revision_quiet_seconds``).
        """
        quiet = self.spec.revision_quiet_seconds
        ready = [slot for slot, last in self.revised.items() if now is None or now - last >= quiet]
        return [self.again(slot) for slot in sorted(ready)]

    def again(self, slot: Slot, by: str = "revision") -> ClosedWindow:
        """A kept window's next revision: its late partials merged so far, or none (``by`` its reference).

        One asked for by its reference (``by="reference"``) whose late partials are waiting too is a
        revision by late events: the console tells the two apart (trial 12k: on-time windows read
        "revised as late events came in").
        """
        late = self.revised.pop(slot, None) is not None
        done = self.done[slot]
        done.revision += 1
        return self._closed(done.partial, tuple(done.entries), done.revision, "revision" if late else by)

    def expire(self, now: float) -> list[ClosedWindow]:
        """Closed windows past the revision horizon, forgotten (their entries can go)."""
        self.gaps.expire(now)
        old = [s for s, d in self.done.items() if now - d.closed_at >= self.spec.revision_seconds]
        expired = []
        for slot in old:
            done = self.done.pop(slot)
            self.revised.pop(slot, None)
            self.coverage.pop(slot, None)
            expired.append(self._closed(done.partial, tuple(done.entries), done.revision))
        return expired

    def _close(self, slot: Slot, now: float, by: str = "count", waited: str | None = None) -> ClosedWindow:
        partial = self.open.pop(slot)
        del self.last_update[slot]
        self.reopened.discard(slot)
        entries = tuple(self.entries.pop(slot, ()))
        if self.spec.seconds is not None:
            stream = slot[:2]
            self.closed_upto[stream] = max(self.closed_upto.get(stream, slot[2]), slot[2])
            self.gaps.closed(stream, slot[2], now)
            if self.spec.revision_seconds > 0:
                self.done[slot] = Done(partial, now, 0, list(entries))
        if slot not in self.done:  # later partials of it are late, or belong to the next count window
            self.coverage.pop(slot, None)
        return self._closed(partial, entries, 0, by, waited)

    def _closed(
        self, partial: Partial, entries: tuple[str, ...], revision: int, *why: str | None
    ) -> ClosedWindow:
        if self.spec.seconds is not None:
            start = partial.window_id * self.spec.seconds
            end = start + self.spec.seconds
            window_id: int | None = partial.window_id
        else:
            start, end, window_id = partial.first_seen, partial.last_seen, None
        return ClosedWindow(
            segment=partial.segment,
            kind=partial.kind,
            start=_utc(start),
            end=_utc(end),
            seen=partial.sample.seen,
            rows=partial.sample.rows,
            entries=entries,
            revision=revision,
            window_id=window_id,
            closed_by=why[0] if why else None,
            waited_for=why[1] if len(why) > 1 else None,
        )


# What datetime can hold. A valid event at 9999-12-31T23:59:59Z opens a window
# whose end is in year 10000; its bounds are clamped rather than crash the timer.
# (Whole seconds: datetime.max's microseconds round up to year 10000 as a float.)
_FIRST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def _utc(timestamp: float) -> datetime:
    """The UTC datetime of an epoch timestamp, clamped to years 1-9999.

    >>> _utc(1e12).year
    9999
    """
    return datetime.fromtimestamp(min(max(timestamp, _FIRST), _LAST), UTC)


def window_spec(settings: Settings) -> WindowSpec:
    """The window shape from settings: by count when ``window_events`` is set, else by time."""
    return WindowSpec(
        seconds=None if settings.window_events else settings.window_seconds,
        events=settings.window_events,
        sample_size=settings.window_sample_size,
        grace_seconds=settings.window_grace_seconds,
        idle_seconds=settings.window_idle_seconds,
        close=settings.window_close,
        revision_seconds=settings.window_revision_seconds,
        revision_quiet_seconds=settings.window_revision_quiet_seconds,
        feedback_topic=settings.topics.feedback,
        sources=tuple(
            source_of(topic, partition)
            for topic in (settings.topics.inference, settings.topics.feedback)
            for partition in range(settings.partitions)
        ),
    )
