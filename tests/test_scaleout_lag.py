"""The consumer-lag gauge across a rebalance: a partition not fetched yet since it was assigned."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from streams.ingest_stage import IngestStage
from streams.metrics import Metrics, metric_total


def test_lag_skips_a_partition_with_no_high_water_mark_yet() -> None:
    # After a rebalance (the survivor of a kill -9 gets its partitions again) aiokafka has no
    # high-water mark for a partition until its first fetch: the 5 s timer crashed the worker.
    fetched, reassigned = TP("in", 0), TP("in", 1)
    marks = {fetched: 120, reassigned: None}
    stage = SimpleNamespace(
        app=SimpleNamespace(
            assignor=SimpleNamespace(assigned_actives=lambda: {fetched, reassigned}),
            consumer=SimpleNamespace(highwater=marks.get),
        ),
        _in={"in"},
        last_offset={fetched: 99, reassigned: 40},
        metrics=Metrics(),
    )
    IngestStage.update_lag(stage)  # type: ignore[arg-type]
    text = stage.metrics.render().decode()
    assert metric_total(text, "loopwatch_consumer_lag", topic="in", partition="0") == 20
    assert 'partition="1"' not in text
