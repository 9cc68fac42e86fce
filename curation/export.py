"""Export a dataset version for fine-tuning, the strict formats it must satisfy, and table stats.

JSONL formats (what OpenAI-style chat fine-tuning and TRL read):

- ``sft``, ``golden``, ``safety_review``: ``{"messages": [{"role": ..., "content": ...}, ...]}``;
- ``preference``: the conversational preference format
  ``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}``.

Every line is validated by :class:`ChatExample` or :class:`PreferenceExample`
before it is written, so a file that exports is a file a trainer accepts.
Parquet exports carry every column, lineage included.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curation.errors import DatasetError
from curation.rows import DatasetKind
from curation.store import DatasetStore

ExportFormat = Literal["jsonl", "parquet"]


class ChatMessage(BaseModel):
    """One turn of the chat fine-tuning format: a known role and non-empty text."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, Field(min_length=1)]


class ChatExample(BaseModel):
    """One line of a chat fine-tuning JSONL file: turns that end with the assistant's reply."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    messages: Annotated[list[ChatMessage], Field(min_length=2)]

    @model_validator(mode="after")
    def _ends_with_the_reply(self) -> ChatExample:
        if self.messages[-1].role != "assistant":
            raise ValueError("the last message must be the assistant's reply")
        if not any(m.role == "user" for m in self.messages[:-1]):
            raise ValueError("the turns before the reply must include a user message")
        return self


class PreferenceExample(BaseModel):
    """One line of a preference JSONL file: a prompt, a chosen and a rejected assistant reply."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    prompt: Annotated[list[ChatMessage], Field(min_length=1)]
    chosen: Annotated[list[ChatMessage], Field(min_length=1, max_length=1)]
    rejected: Annotated[list[ChatMessage], Field(min_length=1, max_length=1)]

    @model_validator(mode="after")
    def _replies_are_the_assistants(self) -> PreferenceExample:
        if self.prompt[-1].role != "user":
            raise ValueError("the prompt must end with a user message")
        if self.chosen[0].role != "assistant" or self.rejected[0].role != "assistant":
            raise ValueError("chosen and rejected must be assistant messages")
        if self.chosen[0].content == self.rejected[0].content:
            raise ValueError("chosen and rejected are the same reply")
        return self


def validate_line(kind: DatasetKind, line: str) -> ChatExample | PreferenceExample:
    """Parse one JSONL line strictly in the format of ``kind``; raises ``ValidationError``."""
    model: type[ChatExample] | type[PreferenceExample] = (
        PreferenceExample if kind == "preference" else ChatExample
    )
    return model.model_validate_json(line, strict=True)


def _turns(prompt: list[dict[str, str]] | None) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt or [] if m["content"]]


def to_example(kind: DatasetKind, row: dict[str, Any]) -> ChatExample | PreferenceExample:
    """The fine-tuning example of one stored row (as read back from Delta)."""
    prompt = _turns(row["prompt"])
    if kind == "preference":
        return PreferenceExample.model_validate(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }
        )
    return ChatExample.model_validate(
        {"messages": [*prompt, {"role": "assistant", "content": row["response"]}]}
    )


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Where an export went, from which table version, and how many rows it holds."""

    table: DatasetKind
    version: int
    format: ExportFormat
    path: Path
    rows: int
    skipped: int = 0  # rows that cannot form a valid example (e.g. a flagged prompt with no reply)


def _rows(store: DatasetStore, kind: DatasetKind, version: int) -> Iterator[dict[str, Any]]:
    for batch in store.scan(kind, version).to_batches():
        yield from batch.to_pylist()


def export(
    store: DatasetStore,
    kind: DatasetKind,
    output: Path,
    *,
    fmt: ExportFormat = "jsonl",
    version: int | None = None,
    tag: str | None = None,
) -> ExportResult:
    """Write one table version to ``output`` as chat JSONL or Parquet."""
    pinned = store.resolve(kind, version, tag)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = store.read(kind, pinned)
        pq.write_table(table, output)
        return ExportResult(kind, pinned, fmt, output, table.num_rows)
    written = skipped = 0
    with output.open("w", encoding="utf-8") as out:
        for row in _rows(store, kind, pinned):
            try:
                example = to_example(kind, row)
            except ValidationError:
                # Only safety-review rows may lack a reply (a flagged prompt that errored).
                if kind != "safety_review":
                    raise DatasetError(f"row {row['row_id']} of {kind!r} is not a valid example") from None
                skipped += 1
                continue
            out.write(json.dumps(example.model_dump(), ensure_ascii=False) + "\n")
            written += 1
    return ExportResult(kind, pinned, fmt, output, written, skipped)


@dataclass(frozen=True, slots=True)
class TableStats:
    """Counts of one table version: by model, model version, label, and redactions per kind."""

    table: DatasetKind
    version: int
    rows: int
    by_model: dict[str, int] = field(default_factory=dict)
    by_model_version: dict[str, int] = field(default_factory=dict)
    by_label: dict[str, int] = field(default_factory=dict)
    redactions: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)


def stats(store: DatasetStore, kind: DatasetKind, version: int | None = None) -> TableStats:
    """Counts of one table version (latest by default)."""
    pinned = store.resolve(kind, version)
    table = store.read(kind, pinned).select(["model", "model_version", "label", "redactions"])
    models: Counter[str] = Counter(table.column("model").to_pylist())
    versions: Counter[str] = Counter(
        f"{m}@{v}"
        for m, v in zip(
            table.column("model").to_pylist(), table.column("model_version").to_pylist(), strict=True
        )
    )
    labels: Counter[str] = Counter(table.column("label").to_pylist())
    redactions: Counter[str] = Counter()
    for entries in table.column("redactions").to_pylist():
        for entry in entries or []:
            redactions[entry["kind"]] += entry["count"]
    return TableStats(
        kind,
        pinned,
        table.num_rows,
        dict(models.most_common()),
        dict(versions.most_common()),
        dict(labels.most_common()),
        dict(sorted(redactions.items())),
        store.tags(kind),
    )
