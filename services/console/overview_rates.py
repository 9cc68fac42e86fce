"""The pooled quality rates the Overview says per version, next to the stable version's (trial s18).

A canary serving 5% errors and 20% empty or refusal replies drew no line on any summary page: only
the Segment page's charts showed them. Here each version's detections of the quality-rate detectors
are pooled over the windows in view, as the history holds them: a rate detector's window keeps its
rate and sample counts (``current_rate``, ``reference_rate`` and the sizes, or ``current_hits`` and
``reference_hits`` when too small to judge), the latency detector each judged window's p95
(``p95.observed_ms``: a p95 of several windows cannot be pooled exactly, so their median is said).
The stable version's rows come from the same model partitions the Overview reads already.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj
from pydantic import BaseModel, Field

from services.console.incidents import count_of

#: The rate detectors pooled, and what their rate is called.
RATES = {
    # The feedback first: what users said is what a rollback on bad replies rests on (trial 12u:
    # the Overview gave the errors and the latency of a canary rolled back for 68% thumbs down).
    "quality.negative_feedback.v1": "thumbs down",
    "quality.error_rate.v1": "errors",
    "quality.empty_refusal.v1": "empty or refusal replies",
}
LATENCY = "quality.latency.v1"
#: The detectors whose rows the Overview reads for these rates.
QUALITY_IDS = frozenset({*RATES, LATENCY})


class QualityRate(BaseModel):
    """One pooled quality measure of a version and of its stable version's (None: not in the history)."""

    detector_id: str
    name: str = Field(description="thumbs down, errors, empty or refusal replies, latency p95")
    value: float | None = Field(None, description="This version's: a share (0-1), or milliseconds")
    stable: float | None = Field(None, description="The stable version's, pooled the same way")
    samples: int = Field(0, description="This version's samples (requests) it pools")
    said: str = Field(description="In words: errors 5% (12 of 240) vs 0% on v1 (stable)")


def quality_rates(own: pa.Table, stable: pa.Table | None, stable_name: str | None) -> list[QualityRate]:
    """This version's pooled quality rates (``own``: its quality detections, latest revisions) next to
    the stable version's (``stable``, named ``stable_name``; None for the stable version itself)."""
    out = []
    for detector_id, name in [*RATES.items(), (LATENCY, "latency p95")]:
        mine = _of(own, detector_id)
        if mine.num_rows == 0:
            continue
        theirs = _of(stable, detector_id) if stable is not None else None
        if detector_id == LATENCY:
            value, n = _median_p95(mine)
            other = _median_p95(theirs)[0] if theirs is not None else None
            said = f"{name} {_ms(value)}" + (f" (median of {n} windows' p95)" if n > 1 else "")
            if stable_name is not None:
                said += f" vs {_ms(other)} on {stable_name} (stable)"
        else:
            hits, n, windows = _pooled(mine)
            value = _share(hits, n)
            # In how many windows: a pinned reference window has no quality detection, so these
            # requests can be fewer than the version's events (trial 12r: 0 of 180 beside 235 events).
            said = f"{name} {_pct(value)}{_counts(hits, n, windows)}"
            other = None
            if stable_name is not None:
                # With its counts: the stable version's windows in view, not the reference a detector
                # compared with, which the worst verdict's line gives (trial 23: "9%" and "5%" on v1).
                pooled = _pooled(theirs) if theirs is not None else (0, 0, 0)
                other = _share(*pooled[:2])
                said += f" vs {_pct(other)}{_counts(*pooled)} on {stable_name} (stable)"
        out.append(
            QualityRate(detector_id=detector_id, name=name, value=value, stable=other, samples=n, said=said)
        )
    return out


def _of(rows: pa.Table | None, detector_id: str) -> pa.Table:
    if rows is None or rows.num_rows == 0:
        return pa.table({"detector_id": pa.array([], pa.string())})
    return rows.filter(pc.equal(rows["detector_id"], detector_id))


def _pooled(rows: pa.Table) -> tuple[int, int, int]:
    """(hits, samples, windows) over the windows: each window's hits, else its rate times its samples."""
    measured = _measurements(rows)
    sizes = (
        rows["current_size"] if "current_size" in rows.column_names else pa.nulls(rows.num_rows, pa.int64())
    )
    n = pc.trunc(pc.coalesce(measured["current_samples"], pc.cast(sizes, pa.float64()), 0.0))
    # Python's round() rounds half to even, as Arrow's default does.
    hits = pc.coalesce(pc.round(measured["current_hits"]), pc.round(pc.multiply(measured["current_rate"], n)))
    pooled = pc.is_valid(hits)
    return (
        int(pc.sum(pc.filter(hits, pooled)).as_py() or 0),
        int(pc.sum(pc.filter(n, pooled)).as_py() or 0),
        int(pc.sum(pc.cast(pooled, pa.int64())).as_py() or 0),
    )


def _median_p95(rows: pa.Table) -> tuple[float | None, int]:
    """The median of the judged windows' p95 (ms), and how many windows had one."""
    found = _measurements(rows)["p95.observed_ms"].drop_null().to_pylist()
    return (statistics.median(found) if found else None), len(found)


#: The measurements the pooled rates read (a detection's ``measurements`` has more).
_MEASURED = pa.schema(
    [
        pa.field(name, pa.float64())
        for name in ("current_samples", "current_hits", "current_rate", "p95.observed_ms")
    ]
)
#: The column :func:`with_measured` adds: those measurements of each row, parsed.
MEASURED_COLUMN = "measured"


def with_measured(rows: pa.Table) -> pa.Table:
    """``rows`` with the measurements the pooled rates read parsed into a column, once for every segment."""
    return rows.append_column(MEASURED_COLUMN, _measurements(rows).to_struct_array())


def _measurements(rows: pa.Table) -> pa.Table:
    """The rows' ``measurements`` (a JSON object each) as columns, one row per row, parsed by Arrow:
    a day of a version is 1,440 windows, and converting whole rows one by one in Python took most of
    the Overview's time (trial 22: a p95 of 1.4 s on the console bench)."""
    if MEASURED_COLUMN in rows.column_names:
        return pa.Table.from_struct_array(rows[MEASURED_COLUMN])
    if rows.num_rows == 0 or "measurements" not in rows.column_names:
        return pa.table({f.name: pa.nulls(rows.num_rows, f.type) for f in _MEASURED})
    texts = rows["measurements"].combine_chunks().fill_null("{}")
    texts = pc.if_else(pc.equal(texts, ""), "{}", texts)
    lines = pc.binary_join(pa.ListArray.from_arrays([0, len(texts)], texts), "\n")[0].as_buffer()
    options = paj.ParseOptions(explicit_schema=_MEASURED, unexpected_field_behavior="ignore")
    try:
        return paj.read_json(pa.BufferReader(lines), parse_options=options)
    except pa.ArrowInvalid:  # a value Arrow's parser refuses (NaN, a string where a number goes)
        parsed = [json.loads(text) for text in texts.to_pylist()]
        return pa.Table.from_pylist([{f.name: _number(m.get(f.name)) for f in _MEASURED} for m in parsed])


def _number(value: object) -> float | None:
    """A finite number as a float; anything else (NaN, a string, true) None: not pooled."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _share(hits: int, samples: int) -> float | None:
    return hits / samples if samples else None


def _counts(hits: int, samples: int, windows: int) -> str:
    """`` (12 of 240 in 3 windows)``, or nothing when no window was pooled."""
    return f" ({hits} of {samples} in {count_of(windows, 'window')})" if samples else ""


#: A rate with no window to pool: its windows held too few requests to judge (trial 12t: every
#: request had a latency, yet "latency p95 none measured" read as if none had).
NOT_JUDGED = "unknown (no window judged)"


def _pct(share: float | None) -> str:
    if share is None:
        return NOT_JUDGED
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def _ms(value: float | None) -> str:
    if value is None:
        return NOT_JUDGED
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


def stable_of(rows: Mapping[str, pa.Table], segment: str) -> str | None:
    """The stable segment this one's rate windows were compared with (``stable:<kind>|<key>|@...``)."""
    mine = rows.get(segment)
    if mine is None or "reference" not in mine.column_names:
        return None
    compared = mine.filter(pc.starts_with(mine["reference"], "stable:"))
    if compared.num_rows == 0:
        return None
    key = str(compared["reference"][0].as_py()).split(":", 1)[1].split("|", 1)[1].rsplit("@", 1)[0]
    return key if key != segment else None


def split_own(rows: pa.Table | None) -> tuple[pa.Table | None, pa.Table | None]:
    """A segment's rows (``unjudged_rows`` of :mod:`services.console.overview_judged`, its ``segment``
    metadata naming whose they are) split into its own and its stable segment's."""
    if rows is None:
        return None, None
    key = (rows.schema.metadata or {}).get(b"segment")
    if key is None:
        return rows, None
    mine = pc.equal(rows["segment"], key.decode())
    theirs = rows.filter(pc.invert(mine))
    return rows.filter(mine), theirs if theirs.num_rows else None


def version_of(rows: pa.Table | None) -> str | None:
    """The version of the stable segment's rows (``model|version|...``), or None."""
    if rows is None or rows.num_rows == 0:
        return None
    return str(rows["segment"][0].as_py()).split("|")[1]
