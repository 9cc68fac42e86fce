"""Event-time progress: when a time window has every event it will get (no Kafka in here).

Ingest knows, for every input partition it reads (a *source*: ``topic|partition``
of the inference, feedback and re-key topics), the highest event time it has
passed: its *watermark*, which only grows. :class:`Progress` keeps them; each
batch's partials carry the watermarks of the sources in that batch, and
progress-only records go to every summaries partition now and then
(:meth:`Progress.due`), so that a summaries partition hears from every
source, also from those whose events all go elsewhere. On one summaries
partition a source's progress comes after the partials it covers (one
producer, in order).

A source with no event past a window's end would hold that window open until
its next event, however quiet it is: with a few events a second per partition
that is up to a second more before the verdict. A source that ingest has read
to its end has nothing older pending, so its watermark also advances with the
wall clock (:meth:`Progress.caught_up`): to the time its end was fetched minus
the most its events were behind the wall clock when read lately
(:meth:`Progress.read`), the way Beam's Kafka reader advances an idle
partition's watermark (``CustomTimestampPolicyWithLimitedDelay``). A backdated
replay's events are minutes behind, so its watermarks still follow the events'
times; a producer that holds events back a few seconds moves them back as far.

The detect stage keeps the watermarks heard on each summaries partition it
owns (:class:`Marks`). A time window is complete once every source heard
there, and every *expected* one (each partition of the inference and feedback
topics), has passed its end plus the allowed lateness; a source whose
watermark has not moved for ``idle_seconds`` (an expected one not heard for
that long since the partition's first progress) went quiet and no longer
holds windows back. Without the expected ones, a window closed as soon as the
partitions that reported first had passed it. :meth:`Marks.closing` also says
what closed a window: every input passing it (``watermark``), or one that went
quiet left behind (``idle_timeout``), and the input it waited for last.

>>> marks = Marks(lateness=1.0, idle_seconds=30.0)
>>> marks.observe(3, {"in|0": 59.0, "in|1": 75.0}, now=0.0)
True
>>> marks.complete(3, end=60.0, now=1.0)  # in|0 has not passed 61 yet
False
>>> _ = marks.observe(3, {"in|0": 61.5}, now=2.0); marks.complete(3, end=60.0, now=2.0)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

#: A source's name: ``<topic>|<partition>``.
Source = str


def source_of(topic: str, partition: int) -> Source:
    """The name of an input partition in progress records."""
    return f"{topic}|{partition}"


@dataclass
class Progress:
    """Ingest's watermark per source, and when to tell every summaries partition about them."""

    #: Window length in seconds: passing a window's end plus the lateness is worth telling at once.
    window_seconds: float | None
    #: The allowed lateness (``window_grace_seconds``): what closes a window is its end plus this.
    lateness: float = 0.0
    #: Otherwise at most this often.
    every_seconds: float = 0.2
    #: How long the most a source's events were behind is remembered (the idle time).
    behind_seconds: float = 30.0
    marks: dict[Source, float] = field(default_factory=dict)
    _behind: dict[Source, _Behind] = field(default_factory=dict)
    _told: dict[Source, float] = field(default_factory=dict)
    _told_at: float = -math.inf

    def advance(self, source: Source, timestamp: float) -> None:
        """``source`` passed an event of ``timestamp`` (its watermark never goes back)."""
        if timestamp > self.marks.get(source, -math.inf):
            self.marks[source] = timestamp

    def read(self, source: Source, oldest: float, now: float) -> None:
        """A batch of ``source`` whose oldest event time was ``oldest`` was read at wall time ``now``."""
        behind = self._behind.get(source)
        if behind is None:
            behind = self._behind[source] = _Behind(self.behind_seconds, now)
        behind.add(now - oldest, now)

    def caught_up(self, source: Source, at: float) -> None:
        """Every event of ``source`` appended before wall time ``at`` was passed: nothing older is pending.

        Its events to come are at most as far behind as those read lately, so
        its watermark is at least ``at`` minus that. It moves only when that
        passes another window's end plus the lateness (what closes windows):
        an idle worker sends no progress between windows.
        """
        behind = self._behind.get(source)
        if behind is None or self.window_seconds is None:
            return  # none of its events read yet: how far behind they run is not known
        mark = at - behind.most()
        current = self.marks.get(source, -math.inf)
        if mark > current and (current == -math.inf or self._window(mark) != self._window(current)):
            self.marks[source] = mark

    def of(self, sources: set[Source]) -> dict[Source, float]:
        """The watermarks of ``sources`` (those of one batch: they go with its partials)."""
        return {source: self.marks[source] for source in sources if source in self.marks}

    def drop(self, keep: Callable[[Source], bool]) -> None:
        """Forget the sources ``keep`` refuses (partitions this worker does not read any more)."""
        for source in [s for s in {*self.marks, *self._behind} if not keep(s)]:
            self.marks.pop(source, None)
            self._told.pop(source, None)
            self._behind.pop(source, None)

    def due(self, now: float) -> dict[Source, float]:
        """The watermarks to broadcast now ({} when nothing is due).

        Due when one passed a window's end plus the lateness since the last
        broadcast (that closes the window), or when one moved and
        ``every_seconds`` have passed.
        """
        if not self.is_due(now):
            return {}
        self._told_at = now
        self._told.update(self.marks)
        return dict(self.marks)

    def is_due(self, now: float) -> bool:
        """Whether :meth:`due` would broadcast now."""
        moved = {s: mark for s, mark in self.marks.items() if self._told.get(s) != mark}
        if not moved:
            return False
        crossed = self.window_seconds is not None and any(
            s not in self._told or self._window(mark) != self._window(self._told[s])
            for s, mark in moved.items()
        )
        return crossed or now - self._told_at >= self.every_seconds

    def _window(self, timestamp: float) -> int:
        assert self.window_seconds is not None
        return int((timestamp - self.lateness) // self.window_seconds)


@dataclass
class _Behind:
    """The most a source's events were behind the wall clock when read, over the last one to two periods.

    Forgotten only as newer reads replace it: a source quiet for long keeps the
    last it knew (a producer that holds events back may be quiet in between).
    """

    period: float
    started: float
    latest: float = 0.0  # this period's most
    earlier: float = 0.0  # the period before's

    def add(self, behind: float, now: float) -> None:
        if now - self.started >= self.period:
            self.earlier, self.latest, self.started = self.latest, 0.0, now
        self.latest = max(self.latest, behind)

    def most(self) -> float:
        return max(self.latest, self.earlier)


@dataclass
class _Mark:
    watermark: float
    #: When (wall time) the watermark last moved: a source quiet for idle_seconds holds nothing back.
    #: None: an expected source whose topic has not been heard of on the partition (it holds windows).
    moved_at: float | None
    #: The watermark before its last move: a source whose last move passed a window's end closed it.
    before: float = -math.inf
    #: The watermark before the unit of work (the moves at ``moved_at``) of its last move: heard before it.
    start: float = -math.inf


class Marks:
    """The watermark of every source heard on each summaries partition (the detect stage's view)."""

    def __init__(self, lateness: float, idle_seconds: float, expected: tuple[Source, ...] = ()) -> None:
        self.lateness = lateness
        self.idle_seconds = idle_seconds
        self.expected = expected
        self.partitions: dict[int, dict[Source, _Mark]] = {}
        #: Partitions whose watermarks moved since the caller last wrote them down.
        self.dirty: set[int] = set()

    def observe(self, partition: int, progress: Mapping[Source, float], now: float) -> bool:
        """Progress heard on ``partition``; True when a watermark moved (worth keeping)."""
        marks = self.partitions.get(partition)
        if marks is None:  # the expected sources, below any event time until they are heard
            marks = self.partitions[partition] = {source: _Mark(-math.inf, None) for source in self.expected}
        moved = False
        for source, watermark in progress.items():
            mark = marks.get(source)
            if mark is None or watermark > mark.watermark:
                if mark is None or mark.moved_at is None:
                    _start_quiet(marks, _topic(source), now)
                before = -math.inf if mark is None else mark.watermark
                start = before if mark is None or mark.moved_at != now else mark.start
                marks[source] = _Mark(float(watermark), now, before, start)
                moved = True
        if moved:
            self.dirty.add(partition)
        return moved

    def complete(
        self, partition: int | None, end: float, now: float, ignore: Callable[[Source], bool] | None = None
    ) -> bool:
        """Whether every live source heard on ``partition`` passed ``end`` plus the lateness.

        False while nothing was heard there (the idle rule closes such windows).
        ``ignore``: sources that cannot feed this kind of window (feedback for an
        inference window).
        """
        marks = self.partitions.get(partition) if partition is not None else None
        if not marks:
            return False
        due = end + self.lateness
        return all(mark.watermark >= due for mark in self._feeding(marks, ignore, now, live=True).values())

    def passed(
        self, partition: int | None, end: float, now: float, ignore: Callable[[Source], bool] | None = None
    ) -> bool:
        """Whether :meth:`complete` held before this unit of work (the moves heard at ``now`` left out).

        A window that opens when it had passed already opened for late events; one
        that the same unit's watermarks pass (a batch with events of several windows) is in time.
        """
        marks = self.partitions.get(partition) if partition is not None else None
        if not marks:
            return False
        due = end + self.lateness
        feeding = self._feeding(marks, ignore, now, live=True).values()
        return all((mark.start if mark.moved_at == now else mark.watermark) >= due for mark in feeding)

    def closing(
        self,
        partition: int | None,
        end: float,
        now: float,
        ignore: Callable[[Source], bool] | None = None,
        *,
        idle: bool = False,
    ) -> tuple[str, str | None] | None:
        """What closes a window ending at ``end`` now, and the input it waited for last (None: still open).

        ``idle_timeout`` when an input that went quiet in the last ``idle_seconds`` is
        left behind (it is the one named; one quiet longer held nothing back), or when
        ``idle`` (the window's segment went quiet: the input furthest behind is named);
        else ``watermark``, naming the input whose last move passed the end while
        another had passed it before (None: no input lagged).
        """
        complete = self.complete(partition, end, now, ignore)
        if not idle and not complete:
            return None
        idle = idle and not complete  # a segment gone quiet whose inputs all passed the end: the watermark
        due = end + self.lateness
        heard = self.partitions.get(partition) if partition is not None else None
        marks = self._feeding(heard or {}, ignore, now, live=False)
        recently = 2 * self.idle_seconds  # quiet for idle_seconds, and only since the last idle_seconds
        behind = {
            source: mark
            for source, mark in marks.items()
            if mark.watermark < due and (idle or mark.moved_at is None or now - mark.moved_at < recently)
        }
        if behind:
            source, mark = min(behind.items(), key=lambda item: (item[1].watermark, item[0]))
            return "idle_timeout", _waited(source, mark)
        if idle:
            return "idle_timeout", None
        passed = {source: mark for source, mark in marks.items() if mark.watermark >= due}
        crossed = [(mark.moved_at or 0.0, source) for source, mark in passed.items() if mark.before < due]
        if not crossed:
            return "watermark", None
        at, source = max(crossed)
        if all(mark.before < due and mark.moved_at == at for mark in passed.values()):
            return "watermark", None  # every input passed it in the same move: none lagged
        return "watermark", _waited(source, passed[source])

    def _feeding(
        self, marks: dict[Source, _Mark], ignore: Callable[[Source], bool] | None, now: float, *, live: bool
    ) -> dict[Source, _Mark]:
        """The sources that can feed the window (``live``: only those not quiet for ``idle_seconds``)."""
        return {
            source: mark
            for source, mark in marks.items()
            if not (ignore is not None and ignore(source))
            and (not live or mark.moved_at is None or now - mark.moved_at < self.idle_seconds)
        }

    def of(self, partition: int) -> dict[Source, float]:
        """The watermarks of ``partition`` (what its table entry keeps)."""
        marks = self.partitions.get(partition, {})
        return {source: mark.watermark for source, mark in marks.items() if mark.watermark > -math.inf}

    def restore(self, partition: int, watermarks: Mapping[Source, float], now: float) -> None:
        """Watermarks kept in the table; they count as moved ``now`` (their idle period starts again)."""
        self.observe(partition, watermarks, now)
        self.dirty.discard(partition)
        # Heard before the restart, not in this unit (:meth:`passed`).
        for source, watermark in watermarks.items():
            mark = self.partitions[partition][source]
            mark.start = max(mark.start, float(watermark))

    def forget(self, partitions: set[int]) -> None:
        """Drop what was heard on partitions another worker owns now."""
        for partition in partitions:
            self.partitions.pop(partition, None)
            self.dirty.discard(partition)


def _topic(source: Source) -> str:
    return source.rsplit("|", 1)[0]


def _waited(source: Source, mark: _Mark) -> str:
    """``llm.feedback.v1 partition 3 (event time reached 03:31:05 at 03:31:21)``: wall and event time, UTC."""
    topic, _, partition = source.rpartition("|")
    if mark.watermark == -math.inf or mark.moved_at is None:
        return f"{topic} partition {partition} (no event time heard)"
    reached, at = (
        datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S") for t in (mark.watermark, mark.moved_at)
    )
    return f"{topic} partition {partition} (event time reached {reached} at {at})"


def _start_quiet(marks: dict[Source, _Mark], topic: str, now: float) -> None:
    """A topic is heard of: its partitions not heard yet go quiet from now (a topic may start late)."""
    for source, mark in marks.items():
        if mark.moved_at is None and _topic(source) == topic:
            mark.moved_at = now
