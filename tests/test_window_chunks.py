"""A batch with many events of one window keeps all their rows: one partial per ``rows_per_partial`` events.

Pure code, partials built as ingest builds them (:meth:`BatchSummaries.keeps`) and
merged as the detect stage merges them. Trial 17c: after a backlog, ingest read
~600 events of a window in one batch into one 200-row partial, and the window
was judged on 368 rows of 1,051 events.
"""

from __future__ import annotations

import json
import random

from streams.window_batch import BatchSummaries
from streams.windows import Partial, Windows
from tests.test_window_dedup import SOURCE, SPEC

SEGMENT = ("m", "v1", "a", None, None)


def _batch(offsets: range, seed: int) -> list[Partial]:
    """One ingest batch reading ``offsets`` of one source, every event in window 0, as JSON round-tripped."""
    batch = BatchSummaries(SPEC, 200, random.Random(seed))
    for offset in offsets:
        batch.keeps(SEGMENT, "inference", 1.0 + offset * 0.01, SOURCE, offset, {"offset": offset})
    return [Partial.from_json(json.loads(json.dumps(p.to_json()))) for p in batch.all()]


def _closed_rows(partials: list[Partial]) -> tuple[int, list[int]]:
    windows = Windows(SPEC)
    for partial in partials:
        windows.add(partial, now=0.0, partition=0)
    windows.progress(0, {SOURCE: 1_000.0}, now=1.0)
    [closed] = windows.tick(now=1.0)
    return closed.seen, [row["offset"] for row in closed.rows]


def test_a_batch_of_600_events_of_one_window_is_three_full_partials_and_keeps_every_row() -> None:
    partials = _batch(range(600), seed=1)
    assert [p.sample.seen for p in partials] == [200, 200, 200]
    assert all(p.sample.floor == 0.0 and len(p.sample.rows) == 200 for p in partials)
    seen, rows = _closed_rows(partials)
    assert seen == 600 and sorted(rows) == list(range(600))


def test_a_reread_of_chunked_batches_counts_and_keeps_each_event_once() -> None:
    # Killed after publishing offsets 0-599, before committing them: the next owner reads 300-899.
    seen, rows = _closed_rows(_batch(range(600), seed=1) + _batch(range(300, 900), seed=2))
    assert seen == 900 and sorted(rows) == list(range(900))
