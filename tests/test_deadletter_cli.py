"""``loopwatch deadletter stats|show|replay``: pure parts, then one replay through a real worker."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.settings import Settings
from curation import DATASET_KINDS
from curation.store import DatasetStore
from schemas.events import DeadLetter, DeadLetterReason, SourceRef
from services import sample_data
from services.cli import main
from services.deadletters import (
    REPLAY_HEADER,
    StoredLetter,
    parse_letters,
    plan_replay,
    printable,
    select,
    show_lines,
    stats,
)
from services.replay import Replayer
from services.topic_reader import Fetched, Place, TopicRecord, read_records
from streams.ingest import Rejected, dead_letter
from tests.helpers import WorkerStack

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOSTILE = b'{"prompt": "\x1b]0;owned\x07\x1b[2J\x9b31m \xe2\x80\xae gpj.exe \xff\xfe\n\r\t\xe2\x80\xa8"}'


def _letter(
    value: bytes,
    *,
    reason: DeadLetterReason = DeadLetterReason.MALFORMED_JSON,
    key: bytes | None = b"r-1",
    prefix: int = 65_536,
    offset: int = 7,
    topic: str = "llm.inference.v1",
    at: datetime = T0,
    error: str = "Expecting value",
) -> StoredLetter:
    source = SourceRef(topic=topic, partition=1, offset=offset)
    letter = dead_letter(Rejected(reason, error), source, key, value, at, prefix_bytes=prefix)
    return StoredLetter(0, offset, letter)


def _no_fetch(places: list[Place]) -> Fetched:
    raise AssertionError(f"fetched {places} although the letters kept the whole messages")


def _unsafe(text: str) -> list[str]:
    return [c for c in text if c != " " and unicodedata.category(c)[0] in "CZ"]


def test_show_prints_hostile_bytes_escaped_and_marks_a_truncated_value() -> None:
    stored = _letter(HOSTILE + b"x" * 100, key=b"k\x1b[1m", prefix=40, error="bad \x1b[31m field \u202e")
    lines = list(show_lines(stored, "loopwatch.deadletter.v1", max_bytes=1_000))
    text = "\n".join(lines)
    assert all(not _unsafe(line) for line in lines), [_unsafe(line) for line in lines]
    # Each hostile part is shown as an escape a person can read.
    for escaped in ("\\x1b]0;owned\\x07", "\\x1b[2J", "\\x9b31m", "\\u202e", "k\\x1b[1m", "bad \\x1b[31m"):
        assert escaped in text, escaped
    value_bytes = len(HOSTILE) + 100
    assert f"{value_bytes:,} bytes" in text and "TRUNCATED" in text
    assert f"[{value_bytes - 40:,} bytes not kept]" in text
    assert printable(HOSTILE).endswith('\\xff\\xfe\\n\\r\\t\\u2028"}')
    whole = "\n".join(show_lines(_letter(b"{oops"), "dl", max_bytes=2))
    assert "kept whole" in whole and "TRUNCATED" not in whole
    assert "{o …[3 more kept bytes not shown: --max-bytes]" in whole


def test_stats_count_by_reason_source_topic_and_hour() -> None:
    letters = [
        _letter(b"a", at=T0),
        _letter(b"b", at=T0 + timedelta(minutes=59)),
        _letter(b"c", at=T0 + timedelta(hours=1), topic="llm.feedback.v1"),
        _letter(b"d", at=T0 + timedelta(hours=1), reason=DeadLetterReason.OVERSIZE),
    ]
    counted = stats(letters)
    assert counted.total == 4
    assert counted.by_reason == {"malformed_json": 3, "oversize": 1}
    assert counted.by_topic == {"llm.inference.v1": 3, "llm.feedback.v1": 1}
    assert counted.by_hour == {
        ("2026-12-01T12:00Z", "llm.inference.v1", "malformed_json"): 2,
        ("2026-12-01T13:00Z", "llm.feedback.v1", "malformed_json"): 1,
        ("2026-12-01T13:00Z", "llm.inference.v1", "oversize"): 1,
    }
    chosen = select(
        letters, reasons=["malformed_json"], topic="llm.inference.v1", since=T0 + timedelta(minutes=1)
    )
    assert [s.letter.value_sha256 for s in chosen] == [hashlib.sha256(b"b").hexdigest()]


def test_parse_letters_skips_records_that_are_not_dead_letters() -> None:
    good = _letter(b"x").letter.model_dump_json().encode()
    letters, unreadable = parse_letters([TopicRecord(0, 1, good), TopicRecord(0, 2, b'{"reason": 1}')])
    assert [s.offset for s in letters] == [1] and len(unreadable) == 1 and unreadable[0].startswith("0@2:")


def test_replay_plan_uses_kept_bytes_fetches_truncated_ones_and_says_why_others_cannot_go() -> None:
    long = b'{"event_id": "e-2", ' + b"x" * 200 + b"}"
    whole = _letter(b"{oops", offset=1)
    repeat = _letter(b"{oops", offset=2)  # the same message refused twice
    truncated = _letter(long, prefix=16, offset=3, key=b"r-2")
    moved = _letter(long, prefix=16, offset=4, key=b"r-2")
    gone = _letter(long, prefix=16, offset=5)
    output = StoredLetter(
        0,
        6,
        dead_letter(
            Rejected(DeadLetterReason.OUTPUT_TOO_LARGE, "too big"),
            None,
            None,
            b"y",
            T0,
            prefix_bytes=8,
            output_topic="loopwatch.inference-enriched.v1",
        ),
    )
    asked: list[Place] = []

    def fetch(places: list[Place]) -> Fetched:
        asked.extend(places)
        return Fetched(
            {
                ("llm.inference.v1", 1, 3): TopicRecord(1, 3, long, b"r-2"),
                ("llm.inference.v1", 1, 4): TopicRecord(1, 4, long + b" ", b"r-2"),  # another message now
            },
            {("llm.inference.v1", 1, 5): "no longer retained (llm.inference.v1/1 now starts at offset 9)"},
        )

    plan = plan_replay([whole, repeat, truncated, moved, gone, output], fetch)
    assert sorted(asked) == [("llm.inference.v1", 1, o) for o in (3, 4, 5)]
    assert [(o.stored.offset, o.key, o.value, o.fetched) for o in plan.originals] == [
        (1, b"r-1", b"{oops", False),
        (3, b"r-2", long, True),
    ]
    assert plan.duplicates == 1
    why = {u.stored.offset: u.why for u in plan.unreplayable}
    assert set(why) == {4, 5, 6}
    assert why[4].startswith("SHA-256 mismatch: the record at llm.inference.v1/1@4")
    assert why[5] == (
        f"only 16 of {len(long)} bytes kept, and the original is no longer retained"
        " (llm.inference.v1/1 now starts at offset 9)"
    )
    assert why[6].startswith("output_too_large: an output loopwatch derived")
    assert plan_replay([whole, repeat], _no_fetch).originals[0].value == b"{oops"


def test_since_takes_a_duration_or_a_time_and_refuses_anything_else() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["deadletter", "stats", "--since", "yesterday"])
    assert result.exit_code == 2 and "use an ISO 8601 time or a duration" in result.output


# -- one replay through a real worker ---------------------------------------------------


def _cli(stack: WorkerStack, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in stack.env.items() if k.startswith("LOOPWATCH_TOPIC_")}
    result = CliRunner().invoke(main, ["deadletter", *args, "--bootstrap", stack.bootstrap], env=env)
    return result.exit_code, result.output


def _rows(root: Path) -> list[str]:
    """Every curated row id, duplicates kept (a thumbs-up is a golden row, or a safety one if flagged)."""
    store = DatasetStore(root)
    return sorted(
        r
        for kind in DATASET_KINDS
        if store.exists(kind)
        for r in store.read(kind).column("row_id").to_pylist()
    )


@pytest.mark.broker
def test_replayed_dead_letters_are_processed_once_even_when_replayed_twice(
    broker: str, tmp_path: Path, exchanges: list[sample_data.Exchange]
) -> None:
    # A 64-byte prefix: every event's dead letter is truncated, so replay must fetch the originals.
    stack = WorkerStack(broker, tmp_path, detection="false", deadletter_value_bytes=64).start()
    topics, rng, now = stack.topics, random.Random(5), sample_data.now()
    chosen = list({e.request_id: e for e in exchanges}.values())[:3]
    inferences = [json.dumps(sample_data.inference_event(e, now, rng)).encode() for e in chosen]
    feedback = [
        json.dumps(
            {
                "schema_version": "1",
                "event_id": f"fb-{e.request_id}",
                "request_id": e.request_id,
                "timestamp": (now + timedelta(seconds=1)).isoformat(),
                "source": "user",
                "kind": "thumbs",
                "value": True,
            }
        ).encode()
        for e in chosen
    ]
    # The producer's bug: a Kafka timestamp 30 days ahead, so every event is timestamp_out_of_range.
    wrong_clock = int((now + timedelta(days=30)).timestamp() * 1000)
    producer = Replayer(Settings(kafka_bootstrap=broker))
    for topic, values in ((topics.inference, inferences), (topics.feedback, feedback)):
        for value in values:
            request_id = json.loads(value)["request_id"].encode()
            producer.producer.send(topic, value=value, key=request_id, timestamp_ms=wrong_clock)
    producer.send(topics.inference, b'{"request_id": "\x1b[31mred', key=b"r-bad")
    producer.close()
    try:
        stack.read(topics.deadletter, 7)
        code, out = _cli(stack, "stats", "--format", "json")
        assert code == 0, out
        counted = json.loads(out)
        assert counted["by_reason"] == {"timestamp_out_of_range": 6, "malformed_json": 1}
        assert counted["by_source_topic"] == {topics.inference: 4, topics.feedback: 3}

        code, out = _cli(stack, "show", "--reason", "malformed_json")
        assert code == 0 and "\\x1b[31mred" in out and "\x1b" not in out, out
        code, out = _cli(
            stack, "show", "--reason", "timestamp_out_of_range", "--limit", "2", "--format", "json"
        )
        shown = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and len(shown) == 2 and all(letter["value_truncated"] for letter in shown)

        code, out = _cli(stack, "replay", "--reason", "timestamp_out_of_range", "--dry-run")
        assert code == 0 and "would replay 6 of 6" in out and out.count("fetched from the source") == 6, out

        root, rows = tmp_path / "data" / "datasets", []
        for _ in ("first", "second"):
            code, out = _cli(stack, "replay", "--reason", "timestamp_out_of_range", "--no-progress")
            assert code == 0, out
            assert "replayed 6 of 6 dead letters" in out
            stack.read(topics.joined, 3)
            stack.wait_committed(topics.inference, topics.feedback, topics.joined)
            rows.append(_rows(root))
        joined = [json.loads(r.value) for r in stack.read_all(topics.joined)]
        headers = [dict(r.headers).get(REPLAY_HEADER) for r in stack.read_all(topics.inference)]
        feedback_duplicates = stack.metric("loopwatch_feedback_duplicate_total")
        letters = stack.read_all(topics.deadletter)
        # Places that hold nothing come back with why, not as an error.
        nowhere = read_records(
            Settings(kafka_bootstrap=broker),
            [(topics.inference, 99, 0), (topics.inference, 0, 10**6)],
            timeout=2,
        )
    finally:
        stack.stop()
    # Twice replayed, once joined and once curated: the join and curation dedupe by event id.
    assert sorted(j["feedback"]["event_id"] for j in joined) == sorted(f"fb-{e.request_id}" for e in chosen)
    assert len(rows[0]) == 3 and rows[1] == rows[0]
    assert feedback_duplicates == 3
    assert len(letters) == 7  # nothing refused again
    assert not nowhere.records and nowhere.missing == {
        (topics.inference, 99, 0): f"gone: {topics.inference} has no partition 99",
        (topics.inference, 0, 10**6): f"not found at {topics.inference}/0@{10**6} within 2s",
    }
    # Two replays of 3 inference events, none by the dry run; each copy names the refused original.
    assert sum(1 for h in headers if h is not None) == 6
    assert all(h.decode().startswith(f"{topics.inference}/") for h in headers if h is not None)
    # The replays were read from the source offsets: the dead letters kept 64 bytes of each event.
    kept = [DeadLetter.model_validate_json(r.value) for r in letters]
    late = [k for k in kept if k.reason == DeadLetterReason.TIMESTAMP_OUT_OF_RANGE]
    assert len(late) == 6 and all(len(base64.b64decode(k.value_b64)) == 64 < k.value_bytes for k in late)
