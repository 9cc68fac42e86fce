"""Open windows on the changelog: what the detect stage merged survives a crash, a stop or a move.

The detect stage merges the partial summaries of a window in memory
(:class:`~streams.windows.Windows`), and the summaries are acked as they are
merged: before this table, a worker that crashed or stopped lost what it had
merged of every open window, and the window was judged on what came after.
Now each merged partial is also an entry of the changelog-backed ``windows``
table, written in the unit that merged it (so before its summary is acked),
and deleted in the unit that closes its window (after that window's
Detections are acknowledged). A restarted worker, or the one a rebalance
gives the partition to, rebuilds the open windows from the entries.

Five kinds of entry, each value zlib-compressed JSON naming the summaries
partition it belongs to:

- ``open|<topic>|<partition>|<offset>``: one merged partial, as it came (a
  replayed summary writes the same key again, so nothing counts twice; the
  input offsets it counted rebuild what each window counted, so a partial
  ingest published twice counts once: :mod:`streams.window_dedup`); the
  partials of a closed time window stay until it leaves the revision horizon;
- ``closed|<kind>|<segment>``: the last time window closed, so a late partial
  after a restart is still late and does not open that window again;
- ``done|<kind>|<segment>|<window id>``: a closed time window kept for
  revisions (its revision number and when it closed), deleted with its partials;
- ``marks|<partition>``: the watermarks heard on that summaries partition
  (written when one moves), so a new owner neither closes early nor waits forever;
- ``slow|<kind>|<segment>|<start>``: a window closed whose slow detectors
  have not answered yet; deleted with their Detections, re-queued on recovery.

Partials merged and closed within one unit are never written at all when
their window is not kept for revisions (a count window that one summary
completes costs nothing here).

Every write names its partition, and a write for a summaries partition this
worker does not own (revoked in a rebalance) is logged and dropped, never put.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.runtime import ChangelogTable, Effects
from streams.watermarks import Source
from streams.windows import ClosedWindow, Done, Partial, Sample, WindowKind, Windows, segment_key

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.detect")


def _encode(data: dict[str, Any]) -> bytes:
    # Level 1: most of a partial is text, which compresses well even at the fastest level.
    return zlib.compress(json.dumps(data).encode(), 1)


def _decode(value: bytes) -> dict[str, Any]:
    return dict(json.loads(zlib.decompress(value)))


@dataclass
class Restored:
    """What the table held for some partitions: open partials, last closed windows, slow work pending."""

    partials: list[tuple[str, Partial]] = field(default_factory=list)
    #: Per stream: (segment, kind, last closed window id, when its closing passed which ids).
    closed: list[tuple[dict[str, str | None], WindowKind, int, dict[str, Any]]] = field(default_factory=list)
    pending: list[tuple[str, ClosedWindow]] = field(default_factory=list)
    #: Closed windows kept for revisions: (partition, segment, kind, window id, revision, closed at, outcome).
    done: list[tuple[int, dict[str, str | None], WindowKind, int, int, float, str]] = field(
        default_factory=list
    )
    marks: list[tuple[int, dict[Source, float]]] = field(default_factory=list)


class WindowTable:
    """The detect stage's ``windows`` table: entries for open windows and windows awaiting slow detectors."""

    def __init__(self, app: LoopwatchApp, partitions: int) -> None:
        self.table = ChangelogTable(app, "windows", partitions)
        # Entries of this unit not written yet (key -> value, partition); written by flush().
        self.unwritten: dict[str, tuple[bytes, int]] = {}
        # Written entries -> their partition (to delete them there).
        self.partition: dict[str, int] = {}
        #: The summaries partitions this worker owns (None: not known yet, nothing is refused).
        self.owned: set[int] | None = None

    @staticmethod
    def key(message: Any) -> str:
        """The entry key of a summary message."""
        return f"open|{message.topic}|{message.partition}|{message.offset}"

    def holds(self, message: Any) -> bool:
        """Whether the summary is merged into an open window already (restored from the table)."""
        return self.key(message) in self.partition

    def entry(self, message: Any, summary: str) -> str:
        """The entry of a merged summary (its text as it came), kept until :meth:`flush`."""
        key = self.key(message)
        value = zlib.compress(f'{{"partition":{message.partition},"summary":{summary}}}'.encode(), 1)
        self.unwritten[key] = (value, message.partition)
        return key

    def flush(
        self, effects: Effects, closed: list[ClosedWindow], windows: Windows, partition_of: dict[str, int]
    ) -> None:
        """This unit's writes: closed windows' entries deleted, open windows' new entries written."""
        for window in closed:
            segment = segment_key(window.segment)
            partition = partition_of.get(segment, 0)
            kept = (
                None
                if window.window_id is None
                else windows.done.get((segment, window.kind, window.window_id))
            )
            if kept is None:
                self._delete(effects, window.entries)
            else:  # its partials stay for revisions; this says it is closed, and which revision it is at
                done = [window.segment, window.kind, window.window_id, window.revision, kept.closed_at]
                value = _encode({"partition": partition, "done": done, "outcome": kept.outcome})
                self._put(effects, f"done|{window.kind}|{segment}|{window.window_id}", value, partition)
            upto = windows.closed_upto.get((segment, window.kind))
            if upto is not None and window.revision == 0:  # later partials of it stay late after a restart
                gaps = windows.gaps.to_json((segment, window.kind))
                marker = {"partition": partition, "closed": [window.segment, window.kind, upto], "gaps": gaps}
                self._put(effects, f"closed|{window.kind}|{segment}", _encode(marker), partition)
        for key, (value, partition) in self.unwritten.items():
            self.partition[key] = partition
            self._put(effects, key, value, partition)
        self.unwritten.clear()

    def _delete(self, effects: Effects, keys: tuple[str, ...]) -> None:
        for key in keys:
            if self.unwritten.pop(key, None) is None:  # merged in an earlier unit: on the table
                self._put(effects, key, None, self.partition.pop(key, 0))

    def expire(self, effects: Effects, expired: list[ClosedWindow], partition_of: dict[str, int]) -> None:
        """Closed windows past the revision horizon: their partials and marker go."""
        for window in expired:
            self._delete(effects, window.entries)
            segment = segment_key(window.segment)
            key = f"done|{window.kind}|{segment}|{window.window_id}"
            self._put(effects, key, None, partition_of.get(segment, 0))

    def marks(self, effects: Effects, partition: int, watermarks: dict[Source, float]) -> None:
        """The watermarks heard on ``partition`` now (one entry per partition)."""
        self._put(
            effects, f"marks|{partition}", _encode({"partition": partition, "marks": watermarks}), partition
        )

    def pending(self, effects: Effects, window: ClosedWindow, partition: int) -> str:
        """Keep a closed window until its slow detectors answer; returns its key for :meth:`done`."""
        key = f"slow|{window.kind}|{segment_key(window.segment)}|{window.start.isoformat()}"
        self._put(effects, key, _encode({"partition": partition, "window": window.to_json()}), partition)
        self.partition[key] = partition
        return key

    def done(self, effects: Effects, key: str) -> None:
        """The slow detectors answered (their Detections go out first): forget the window."""
        self._put(effects, key, None, self.partition.pop(key, 0))

    def forget(self, keys: list[str]) -> None:
        """Entries now on another worker's partitions: not ours to delete any more."""
        for key in keys:
            self.partition.pop(key, None)
            self.unwritten.pop(key, None)

    def restore(self, partitions: set[int]) -> Restored:
        """Everything the table holds for ``partitions`` (recovered from the changelog by faust)."""
        restored = Restored()
        for raw_key, value in list(self.table.table.data.items()):
            key = raw_key.decode()
            data = _decode(value)
            if data["partition"] not in partitions:
                continue
            self.partition[key] = data["partition"]
            if "summary" in data:
                restored.partials.append((key, Partial.from_json(data["summary"])))
            elif "closed" in data:
                segment, kind, window_id = data["closed"]
                restored.closed.append((segment, kind, window_id, data.get("gaps", {})))
            elif "window" in data:
                restored.pending.append((key, ClosedWindow.from_json(data["window"])))
            elif "done" in data:
                segment, kind, window_id, revision, closed_at = data["done"]
                outcome = data.get("outcome", "judged")
                restored.done.append(
                    (data["partition"], segment, kind, window_id, revision, closed_at, outcome)
                )
            elif "marks" in data:
                restored.marks.append((data["partition"], data["marks"]))
        return restored

    def _put(self, effects: Effects, key: str, value: bytes | None, partition: int) -> None:
        if self.owned is not None and partition not in self.owned:
            # Revoked: the new owner writes this partition now; a write from here would undo its work.
            log.warning(
                "dropped a write to the windows table for summaries partition %d, not ours", partition
            )
            return
        effects.put(self.table, key.encode(), value, partition)


def restore_windows(windows: Windows, restored: Restored, now: float) -> list[str]:
    """Rebuild open windows from the table; returns the entries that were late (to delete them).

    A restored window's idle and grace periods start now: the partials it still
    waits for may be behind the restarted worker's consumer; so do the idle
    periods of the restored watermarks. A closed window kept for revisions
    gets its partials back, and its revision number.
    """
    for segment, kind, window_id, gaps in restored.closed:
        stream = (segment_key(segment), kind)
        windows.closed_upto[stream] = max(windows.closed_upto.get(stream, window_id), window_id)
        windows.gaps.restore(stream, gaps)
    for partition, watermarks in restored.marks:
        windows.marks.restore(partition, watermarks, now)
    for partition, segment, kind, window_id, revision, closed_at, outcome in restored.done:
        slot = (segment_key(segment), kind, window_id)
        empty = Sample(windows.spec.sample_size)
        windows.restore_done(
            slot,
            Done(
                Partial(segment, kind, window_id, math.inf, -math.inf, empty),
                closed_at,
                revision,
                [],
                outcome,
            ),
        )
        windows.partition[slot[:2]] = partition
    late = []
    # In the order they were merged: of two copies of an event (ingest read it twice), the first is kept.
    for key, partial in sorted(restored.partials, key=lambda kept: _merge_order(kept[0])):
        slot = windows.slot(partial)
        windows.partition[slot[:2]] = restored_partition(key)
        if slot in windows.done:
            windows.redo(partial, key)
        elif not windows.merges(partial):
            late.append(key)
        else:
            windows.restore(partial, now, key)
    return late


def _merge_order(key: str) -> tuple[str, int, int]:
    """Where an ``open|<topic>|<partition>|<offset>`` entry's summary was on the summaries topic."""
    topic, partition, offset = key.split("|", 1)[1].rsplit("|", 2)
    return topic, int(partition), int(offset)


def restored_partition(key: str) -> int:
    """The summaries partition of an ``open|<topic>|<partition>|<offset>`` entry."""
    return int(key.rsplit("|", 2)[1])
