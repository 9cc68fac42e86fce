"""Each event counted once in its window, however often ingest read it (no Kafka in here).

Ingest's outputs are acknowledged before its join changelog and input offsets,
so a worker killed in between leaves a unit whose partials are out and whose
input is read again by the next owner, in batches cut at other boundaries.
Each partial therefore says which events it counted: per source (input
``topic|partition``) the offsets of its events as runs ``[[first, last], ...]``
(:func:`add_offset`; an offset that yielded two events, one inference joined to two
feedbacks, appears twice), and each sample entry its ``(source, offset)``.

A batch reads a source's offsets without gaps, so a partial whose events from a
source lie in ``[first, last]`` counted every event of its window there. Per
window and source the detect stage keeps the union of those spans
(:class:`Coverage`); an event of a later partial inside it was counted
already: it is subtracted from ``seen`` and its sample entry dropped
(:func:`drop_counted`). What is left is still a uniform sample: a re-read event
drew a new key, and which copy survives does not depend on the keys. The union
does not depend on the order partials come in (a delivery sent again after a
later one, entries restored from the table in any order), which a high-water
mark per source would.

A feedback event is counted at the offset its feedback was read at (the
original message's, for a re-keyed copy), not at the message that joined it:
a feedback that came before its inference is joined by the inference's batch
in one run and, read again in batches cut elsewhere, by its own batch in the
next. Those runs are no gap-free read of the feedback topic (the feedbacks
still waiting for their inference lie between them), so a feedback window
keeps exactly the runs it counted (``exact``), not the span around them.

>>> window: dict[str, Coverage] = {}
>>> first: list[list[int]] = []
>>> for offset in (10, 11, 14):
...     add_offset(first, offset)
>>> first
[[10, 11], [14, 14]]
>>> count_duplicates({"in|0": first}, window), count_duplicates({"in|0": [[14, 14], [20, 20]]}, window)
(0, 1)
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from typing import TYPE_CHECKING

from streams.watermarks import Source

if TYPE_CHECKING:
    from streams.windows import Partial

#: Where a sample entry's event came from: (source, offset).
Origin = tuple[Source, int]


def add_offset(runs: list[list[int]], offset: int) -> None:
    """Count one more event at ``offset`` (in offset order) into ``[first, last]`` runs.

    The same offset again starts a new run: it is a second event of that message.
    """
    if runs and runs[-1][1] == offset - 1:
        runs[-1][1] = offset
    else:
        runs.append([offset, offset])


class Coverage:
    """The offsets of one source a window has counted: disjoint ``[first, last]`` spans, sorted."""

    def __init__(self) -> None:
        self.firsts: list[int] = []
        self.lasts: list[int] = []

    def covers(self, offset: int) -> bool:
        """Whether the event at ``offset`` was counted already."""
        at = bisect_right(self.firsts, offset) - 1
        return at >= 0 and self.lasts[at] >= offset

    def overlap(self, first: int, last: int) -> int:
        """How many offsets of ``[first, last]`` were counted already."""
        found = 0
        at = max(bisect_right(self.firsts, first) - 1, 0)
        while at < len(self.firsts) and self.firsts[at] <= last:
            found += max(0, min(last, self.lasts[at]) - max(first, self.firsts[at]) + 1)
            at += 1
        return found

    def add(self, first: int, last: int) -> None:
        """``[first, last]`` is counted now (merged with the spans it touches)."""
        low = bisect_left(self.lasts, first - 1)  # the first span that ends at or after first - 1
        high = bisect_right(self.firsts, last + 1)  # past the last span that starts at or before last + 1
        if low < high:
            first, last = min(first, self.firsts[low]), max(last, self.lasts[high - 1])
        self.firsts[low:high] = [first]
        self.lasts[low:high] = [last]


def count_duplicates(
    counted: Mapping[Source, list[list[int]]], window: dict[Source, Coverage], *, exact: bool = False
) -> int:
    """Events of ``counted`` the window counted already; then ``counted``'s spans are added to it.

    ``exact``: the runs are not a gap-free read (feedback, counted at its own offset
    by whichever batch joined it), so only they are added, not the span around them.
    """
    duplicates = 0
    for source, runs in counted.items():
        if not runs:
            continue
        coverage = window.get(source)
        if coverage is not None:
            duplicates += sum(coverage.overlap(first, last) for first, last in runs)
        else:
            coverage = window[source] = Coverage()
        if exact:
            for first, last in runs:
                coverage.add(first, last)
        else:
            coverage.add(min(first for first, _ in runs), max(last for _, last in runs))
    return duplicates


def drop_counted(partial: Partial, window: dict[Source, Coverage]) -> int:
    """Take the events ``window`` counted already out of ``partial`` (count and sample); how many there were.

    A partial without offsets (from a version before them) is left as it is.
    """
    if not partial.counted:
        return 0
    if window:  # entries first: the partial's own spans join the coverage below
        partial.sample.drop(
            lambda origin: origin is not None and origin[0] in window and window[origin[0]].covers(origin[1])
        )
    # A feedback event is counted at its own offset, which a join may reach from an inference batch.
    duplicates = count_duplicates(partial.counted, window, exact=partial.kind == "feedback")
    partial.sample.seen -= duplicates
    return duplicates
