"""Arrow columns as the Python lists the pages' models hold, boxed at C speed.

A 7-day Segment page has 10,000 windows per series and a dozen lists per
series. ``to_pylist()`` builds a pyarrow scalar per value (about 0.25 us a
number, 0.6 us a string, 10 us a time-zoned timestamp); numpy boxes numbers
and repeated strings 10-20x faster, and pydantic parses ISO texts into
datetimes in Rust. Each helper returns what ``to_pylist()`` would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import TypeAdapter

Column: TypeAlias = pa.Array | pa.ChunkedArray

_UTC = pa.timestamp("us", tz="UTC")
_DATETIMES = TypeAdapter(list[datetime | None])
_NUMBERS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)


def boxed(column: Column) -> list[Any]:
    """The values of a numeric or boolean column, nulls as None."""
    flat = _flat(column)
    if not any(kind(flat.type) for kind in _NUMBERS):
        return list(flat.to_pylist())
    filler = pa.scalar(False if pa.types.is_boolean(flat.type) else 0, flat.type)
    objects = pc.fill_null(flat, filler).to_numpy(zero_copy_only=False).astype(object)
    if flat.null_count:
        objects[flat.is_null().to_numpy(zero_copy_only=False)] = None
    return list(objects.tolist())


def texts(column: Column) -> list[Any]:
    """The values of a string column with few distinct values (verdicts, outcomes), nulls as None."""
    encoded = pc.dictionary_encode(_flat(column))
    names = np.fromiter([*encoded.dictionary.to_pylist(), None], dtype=object)
    at = pc.fill_null(encoded.indices, len(names) - 1).to_numpy(zero_copy_only=False)
    return list(names[at].tolist())


def iso_times(column: Column) -> list[str | None]:
    """A UTC timestamp column as ISO 8601 texts (numpy formats them in one call)."""
    naive = pc.cast(_flat(column), pa.timestamp("us")).to_numpy(zero_copy_only=False)
    out: list[str | None] = np.datetime_as_string(naive, unit="us", timezone="UTC").tolist()
    if column.null_count:
        out = [None if t == "NaT" else t for t in out]
    return out


class Times:
    """The datetimes of a page's timestamps, made once and shared by every list that shows them.

    >>> from datetime import UTC
    >>> at = pa.array([datetime(2026, 12, 1, 12, tzinfo=UTC)] * 2, _UTC)
    >>> first, second = Times(at).of(at)
    >>> first is second, first.isoformat()
    (True, '2026-12-01T12:00:00+00:00')
    """

    def __init__(self, *columns: Column) -> None:
        chunks = [chunk for column in columns for chunk in _chunks(column)]
        self._values = pc.unique(pa.chunked_array(chunks, _UTC))
        made = _DATETIMES.validate_python(iso_times(self._values))
        # The last one: a value not among them. fromiter: np.array() inspects each datetime (2 us).
        self._boxed = np.fromiter([*made, None], dtype=object, count=len(made) + 1)

    def of(self, column: Column) -> list[datetime | None]:
        """The datetimes of ``column``'s values (each one of the page's timestamps, or null)."""
        at = pc.fill_null(pc.index_in(pc.cast(column, _UTC), value_set=self._values), len(self._boxed) - 1)
        return list(self._boxed[at.to_numpy(zero_copy_only=False)].tolist())


def _flat(column: Column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _chunks(column: Column) -> list[pa.Array]:
    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def parse_objects(objects: pa.Array | pa.ChunkedArray) -> pa.Table | None:
    """JSON objects of numbers as one table (a column per key, null where absent), or None.

    The objects go to pyarrow's JSON reader as one newline-delimited buffer, never as Python strings.
    """
    import pyarrow.json as pa_json

    lines = pc.binary_join_element_wise(pc.cast(objects, pa.string()), "", "\n")  # each, then a newline
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    size = int(pc.sum(pc.binary_length(lines)).as_py() or 0)
    # A string array's bytes are its values back to back, from the offset of its first value.
    first = int(np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset]) if len(lines) else 0
    data = lines.buffers()[2].slice(first, size) if size else pa.py_buffer(b"")
    try:
        # One block: the columns' types are inferred from every row, not the first block's.
        options = pa_json.ReadOptions(use_threads=False, block_size=size + 1)
        parsed = pa_json.read_json(pa.BufferReader(data), read_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    numeric = all(any(kind(t) for kind in _PARSED_NUMBERS) for t in parsed.schema.types)
    return parsed if parsed.num_rows == len(objects) and numeric else None


_PARSED_NUMBERS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null)
