"""The Dead letters page: counts per reason and minute, the replay commands and escaped samples."""

from __future__ import annotations

import base64
import binascii
import json
import shlex
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter, ValidationError

from services.console.chart_labels import count_step
from services.console.reader import HistoryReader
from services.console.views import DayRange
from services.deadletters import printable

MAX_SAMPLES = 50
_TIMESTAMP = TypeAdapter(AwareDatetime)


class ReasonCount(BaseModel):
    """Dead letters of one reason, and the command that replays them."""

    reason: str
    count: int
    replay: str = Field(description="The replay command's selection (reason, since), without its Kafka")
    command: str = Field(
        "",
        description="What to run: replay with --bootstrap (the console's Kafka, or HOST:PORT to fill in)",
    )


class ReasonSeries(BaseModel):
    """Dead letters of one reason per minute."""

    reason: str
    minute: list[datetime]
    count: list[int]


class DeadLetterSample(BaseModel):
    """One dead letter kept as a sample: its error and the start of the original payload, escaped."""

    reason: str
    error: str | None = None
    errors: list[str] = Field(
        default_factory=list,
        description="Every per-field error kept with it (field: message), which its error may sum up as"
        " '... (and 1 more)'",
    )
    minute: datetime = Field(description="The minute (UTC, wall clock) its row counts it in")
    refused_at: datetime | None = Field(
        None, description="When loopwatch refused the message (the dead letter's received_at), when kept"
    )
    source: str | None = Field(None, description="topic/partition/offset of the original message")
    payload: str = Field(description="The kept prefix, control characters escaped")
    value_bytes: int | None = None
    truncated: bool = False


class DeadLetters(BaseModel):
    """The Dead letters page."""

    range: DayRange
    total: int
    reasons: list[ReasonCount]
    series: list[ReasonSeries]
    samples: list[DeadLetterSample]
    count_step: int = Field(1, description="The chart's tick step: whole letters per minute")
    replay_note: str | None = Field(None, description="Said next to the replay commands (a demo's broker)")


#: What the replay command says when the console was given no Kafka: the user must set it.
BOOTSTRAP_PLACEHOLDER = "HOST:PORT"


def with_bootstrap(command: str, bootstrap: str | None) -> str:
    """``command`` sent to the Kafka the console was given, else to a placeholder the user must fill in."""
    return f"{command} --bootstrap {shlex.quote(bootstrap) if bootstrap else BOOTSTRAP_PLACEHOLDER}"


def deadletters_view(history: HistoryReader, span: DayRange, bootstrap: str | None = None) -> DeadLetters:
    """Dead letters by reason per minute, totals with their replay command, and escaped samples."""
    # One scan for the counts and the samples: both come from the same day partitions.
    table = history.read("deadletters", span.days(), columns=["minute", "reason", "count", "samples"])
    frame = table.select(["minute", "reason", "count"]).to_pandas()
    reasons: list[ReasonCount] = []
    series: list[ReasonSeries] = []
    if not frame.empty:
        totals = frame.groupby("reason")["count"].sum().sort_values(ascending=False)
        for reason, count in totals.items():
            replay = f"loopwatch deadletter replay --reason {reason} --since {span.start}"
            reasons.append(
                ReasonCount(
                    reason=str(reason),
                    count=int(count),
                    replay=replay,
                    command=with_bootstrap(replay, bootstrap),
                )
            )
        per_minute = frame.groupby(["reason", "minute"])["count"].sum()
        for reason in totals.index:
            counts = per_minute.loc[reason]
            series.append(
                ReasonSeries(
                    reason=str(reason),
                    minute=list(counts.index.to_pydatetime()),
                    count=[int(c) for c in counts],
                )
            )
    samples = _samples(table.select(["minute", "reason", "samples"]))
    # The bars of a minute stack: its ticks go up to the most letters of one minute, reasons together.
    step = count_step(frame.groupby("minute")["count"].sum().tolist()) if not frame.empty else 1
    return DeadLetters(
        range=span,
        total=sum(r.count for r in reasons),
        reasons=reasons,
        series=series,
        samples=samples,
        count_step=step,
    )


def _samples(table: pa.Table) -> list[DeadLetterSample]:
    samples: list[DeadLetterSample] = []
    # Newest first, and only as many rows as can hold the samples shown (each row keeps at least one).
    rows = table.sort_by([("minute", "descending")]).slice(0, MAX_SAMPLES).to_pylist()
    for row in rows:
        for letter in json.loads(row["samples"] or "[]"):
            if len(samples) >= MAX_SAMPLES:
                return _newest_first(samples)
            samples.append(_sample(row, letter))
    return _newest_first(samples)


def _newest_first(samples: list[DeadLetterSample]) -> list[DeadLetterSample]:
    # Rows of one minute come in any order: the refusal time orders the samples within it.
    return sorted(samples, key=lambda s: (s.minute, s.refused_at or s.minute), reverse=True)


def _sample(row: dict[str, Any], letter: dict[str, Any]) -> DeadLetterSample:
    try:
        kept = base64.b64decode(letter.get("value_b64") or "", validate=True)
    except (binascii.Error, ValueError):
        kept = b""
    source = letter.get("source") or {}
    where = f"{source['topic']}/{source.get('partition')}/{source.get('offset')}" if source else None
    value_bytes = letter.get("value_bytes")
    return DeadLetterSample(
        reason=str(letter.get("reason") or row["reason"]),
        error=letter.get("error"),
        errors=[_field_error(d) for d in letter.get("detail") or [] if isinstance(d, dict)],
        minute=row["minute"],
        refused_at=_refused_at(letter.get("received_at")),
        source=where,
        payload=printable(kept),
        value_bytes=value_bytes,
        truncated=isinstance(value_bytes, int) and value_bytes > len(kept),
    )


def _field_error(detail: dict[str, Any]) -> str:
    """One per-field error of a dead letter (``user_id: ...``), as its ``detail`` entry says it."""
    field, message = detail.get("field"), detail.get("message")
    if message is None:
        return json.dumps(detail, sort_keys=True, default=str)
    return f"{field}: {message}" if field else str(message)


def _refused_at(value: Any) -> datetime | None:
    """A sample's ``received_at`` (the history keeps each sample as its DeadLetter), or None."""
    if not isinstance(value, str):
        return None
    try:
        return _TIMESTAMP.validate_python(value).astimezone(UTC)
    except ValidationError:
        return None  # a sample written by hand or by an older writer: its minute is all there is
