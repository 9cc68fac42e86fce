"""Curation rules: table-driven cases in, exact rows out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from curation.config import CurationConfig
from curation.rows import ToxicityFlag, ToxicityVerdict
from curation.rules import curate, hash_user, normalise, stable_hash
from schemas.events import Feedback, InferenceLog, JoinedFeedback, SourceRef

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROMPT = "How do I reset my password?"


def log(
    request_id: str,
    response: str | None = "Click 'Forgot password' on the sign-in page.",
    *,
    prompt: Any = PROMPT,
    version: str = "v1",
    at: datetime = T0,
    status: str = "ok",
) -> InferenceLog:
    """An InferenceLog with the fields curation reads."""
    return InferenceLog(
        schema_version="1",
        event_id=f"inf-{request_id}",
        request_id=request_id,
        timestamp=at,
        model={"name": "support-assistant", "version": version},
        prompt=prompt,
        response=response,
        status=status,
    )


def fb(request_id: str, kind: str, value: Any = None, correction: str | None = None, n: int = 0) -> Feedback:
    """A Feedback event; ``n`` tells apart several events on one request."""
    return Feedback(
        schema_version="1",
        event_id=f"fb-{kind}-{request_id}-{n}",
        request_id=request_id,
        timestamp=T0 + timedelta(seconds=5),
        kind=kind,
        value=value,
        correction=correction,
        user_id=f"user-hash-{request_id}",
    )


def join(inference: InferenceLog, feedback: Feedback, offset: int = 0) -> JoinedFeedback:
    """The joined record the stream would emit, with made-up but distinct offsets."""
    return JoinedFeedback(
        request_id=inference.request_id,
        inference=inference,
        feedback=feedback,
        inference_source=SourceRef(topic="llm.inference.v1", partition=1, offset=100 + offset),
        feedback_source=SourceRef(topic="llm.feedback.v1", partition=1, offset=200 + offset),
        joined_at=T0 + timedelta(seconds=6),
    )


def summary(result: Any) -> list[tuple[str, str, str, str | None, str | None, str | None]]:
    """(kind, label, request_id, response, chosen, rejected) of every row, in order."""
    return [(r.kind, r.label, r.request_id, r.response, r.chosen, r.rejected) for r in result.rows]


FIX = "Open Settings > Security > Reset password."
ORIG = "Click 'Forgot password' on the sign-in page."
BAD = "I cannot help with that."
TOXIC = ToxicityVerdict(request_id="r1", flags=(ToxicityFlag(target="response", label="insult", score=0.91),))

CASES: list[tuple[str, list[JoinedFeedback], dict[str, ToxicityVerdict], list[tuple[Any, ...]]]] = [
    (
        "thumbs up -> golden",
        [join(log("r1"), fb("r1", "thumbs", True))],
        {},
        [("golden", "thumbs_up", "r1", ORIG, None, None)],
    ),
    (
        "rating 5 -> golden",
        [join(log("r1"), fb("r1", "rating", 5))],
        {},
        [("golden", "high_rating", "r1", ORIG, None, None)],
    ),
    ("rating 3 -> nothing", [join(log("r1"), fb("r1", "rating", 3))], {}, []),
    ("thumbs down without correction -> nothing", [join(log("r1"), fb("r1", "thumbs", False))], {}, []),
    (
        "thumbs up and rating on one request -> one golden row",
        [join(log("r1"), fb("r1", "thumbs", True)), join(log("r1"), fb("r1", "rating", 4), 1)],
        {},
        [("golden", "high_rating+thumbs_up", "r1", ORIG, None, None)],
    ),
    (
        "thumbs up and down on one request -> mixed, nothing",
        [
            join(log("r1"), fb("r1", "thumbs", True)),
            join(log("r1"), fb("r1", "thumbs", False, n=1), 1),
        ],
        {},
        [],
    ),
    (
        "correction -> sft and correction pair",
        [join(log("r1"), fb("r1", "correction", correction=FIX))],
        {},
        [
            ("sft", "correction", "r1", FIX, None, None),
            ("preference", "correction_vs_original", "r1", None, FIX, ORIG),
        ],
    ),
    (
        "thumbs down carrying a correction -> sft and pair",
        [join(log("r1"), fb("r1", "thumbs", -1, correction=FIX))],
        {},
        [
            ("sft", "correction", "r1", FIX, None, None),
            ("preference", "correction_vs_original", "r1", None, FIX, ORIG),
        ],
    ),
    (
        "correction equal to the reply (after normalising) -> nothing",
        [
            join(
                log("r1"),
                fb("r1", "correction", correction="  click 'FORGOT password' on the sign-in page. "),
            )
        ],
        {},
        [],
    ),
    (
        "correction of an errored request -> sft only (no original reply to reject)",
        [join(log("r1", None, status="error"), fb("r1", "correction", correction=FIX))],
        {},
        [("sft", "correction", "r1", FIX, None, None)],
    ),
    (
        "flagged reply with a correction -> safety review and pair, no sft",
        [join(log("r1"), fb("r1", "correction", correction=FIX))],
        {"r1": TOXIC},
        [
            ("safety_review", "insult", "r1", ORIG, None, None),
            ("preference", "correction_vs_original", "r1", None, FIX, ORIG),
        ],
    ),
    (
        "flagged reply with thumbs up -> safety review, not golden",
        [join(log("r1"), fb("r1", "thumbs", True))],
        {"r1": TOXIC},
        [("safety_review", "insult", "r1", ORIG, None, None)],
    ),
    (
        "verdict without flags -> as if unflagged",
        [join(log("r1"), fb("r1", "thumbs", True))],
        {"r1": ToxicityVerdict(request_id="r1")},
        [("golden", "thumbs_up", "r1", ORIG, None, None)],
    ),
    (
        "two versions, same prompt (case and spacing differ), opposite thumbs -> golden and a pair",
        [
            join(log("r1", ORIG, version="v1"), fb("r1", "thumbs", True)),
            join(
                log("r2", BAD, prompt="  how do I reset my PASSWORD? ", version="v2"),
                fb("r2", "thumbs", False),
                1,
            ),
        ],
        {},
        [
            ("golden", "thumbs_up", "r1", ORIG, None, None),
            ("preference", "opposite_feedback", "r1", None, ORIG, BAD),
        ],
    ),
    (
        "opposite feedback on different prompts -> no pair",
        [
            join(log("r1"), fb("r1", "thumbs", True)),
            join(log("r2", BAD, prompt="Where is my invoice?"), fb("r2", "thumbs", False), 1),
        ],
        {},
        [("golden", "thumbs_up", "r1", ORIG, None, None)],
    ),
    (
        "low rating is negative for pairs",
        [
            join(log("r1"), fb("r1", "rating", 5)),
            join(log("r2", BAD, version="v2"), fb("r2", "rating", 1), 1),
        ],
        {},
        [
            ("golden", "high_rating", "r1", ORIG, None, None),
            ("preference", "opposite_feedback", "r1", None, ORIG, BAD),
        ],
    ),
    (
        "identical golden content from two requests -> de-duplicated to the first",
        [join(log("r1"), fb("r1", "thumbs", True)), join(log("r2"), fb("r2", "thumbs", True), 1)],
        {},
        [("golden", "thumbs_up", "r1", ORIG, None, None)],
    ),
    (
        "chat prompt with a system turn -> golden keeps the turns",
        [
            join(
                log(
                    "r1",
                    prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
                ),
                fb("r1", "thumbs", True),
            )
        ],
        {},
        [("golden", "thumbs_up", "r1", ORIG, None, None)],
    ),
    ("no prompt -> nothing", [join(log("r1", prompt=None), fb("r1", "thumbs", True))], {}, []),
]


@pytest.mark.parametrize(
    ("records", "verdicts", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rules_table(
    records: list[JoinedFeedback], verdicts: dict[str, ToxicityVerdict], expected: list[tuple[Any, ...]]
) -> None:
    assert summary(curate(records, verdicts=verdicts)) == expected


def test_pairs_are_capped_per_prompt_and_ordered() -> None:
    liked = [
        join(log(f"g{i}", f"good {i}", at=T0 + timedelta(seconds=i)), fb(f"g{i}", "thumbs", True), i)
        for i in range(3)
    ]
    disliked = [
        join(log(f"b{i}", f"bad {i}", at=T0 + timedelta(seconds=i)), fb(f"b{i}", "thumbs", False), 10 + i)
        for i in range(3)
    ]
    config = CurationConfig(max_pairs_per_prompt=4, enabled=frozenset({"preference"}))
    rows = curate(liked + disliked, config).rows
    assert [(r.chosen, r.rejected) for r in rows] == [
        ("good 0", "bad 0"),
        ("good 0", "bad 1"),
        ("good 0", "bad 2"),
        ("good 1", "bad 0"),
    ]


def test_disabled_kinds_are_not_produced() -> None:
    records = [join(log("r1"), fb("r1", "correction", correction=FIX))]
    config = CurationConfig(enabled=frozenset({"preference"}))
    assert [r.kind for r in curate(records, config).rows] == ["preference"]


def test_golden_threshold_is_configurable() -> None:
    records = [join(log("r1"), fb("r1", "rating", 3))]
    assert curate(records).rows == []
    assert [r.label for r in curate(records, CurationConfig(golden_min_rating=3)).rows] == ["high_rating"]


def test_lineage_of_a_cross_version_pair() -> None:
    records = [
        join(log("r1", ORIG, version="v1"), fb("r1", "thumbs", True)),
        join(log("r2", BAD, version="v2", at=T0 - timedelta(hours=1)), fb("r2", "thumbs", False), 1),
    ]
    verdicts = {
        "r2": ToxicityVerdict(
            request_id="r2", flags=(ToxicityFlag(target="response", label="toxicity", score=0.4),)
        )
    }
    (pair,) = [r for r in curate(records, verdicts=verdicts).rows if r.kind == "preference"]
    assert (pair.model, pair.model_version, pair.rejected_model_version) == ("support-assistant", "v1", "v2")
    assert pair.event_time == T0 - timedelta(hours=1)  # the oldest inference drives retention
    assert pair.feedback_event_ids == ("fb-thumbs-r1-0", "fb-thumbs-r2-0")
    assert [(s.role, s.request_id, s.topic, s.partition, s.offset) for s in pair.sources] == [
        ("inference", "r1", "llm.inference.v1", 1, 100),
        ("feedback", "r1", "llm.feedback.v1", 1, 200),
        ("inference", "r2", "llm.inference.v1", 1, 101),
        ("feedback", "r2", "llm.feedback.v1", 1, 201),
    ]
    assert [(t.request_id, t.label, t.score) for t in pair.toxicity] == [("r2", "toxicity", 0.4)]
    assert pair.row_id == stable_hash("preference", "pair", "r1", "r2")[:32]


def test_safety_row_carries_scores_and_all_feedback() -> None:
    records = [join(log("r1"), fb("r1", "thumbs", True)), join(log("r1"), fb("r1", "rating", 5), 1)]
    (row,) = curate(records, verdicts={"r1": TOXIC}).rows
    assert row.kind == "safety_review"
    assert [(t.detector_id, t.target, t.label, t.score) for t in row.toxicity] == [
        ("toxicity.detoxify.v1", "response", "insult", 0.91)
    ]
    assert row.feedback_event_ids == ("fb-rating-r1-0", "fb-thumbs-r1-0")


def test_user_ids_are_hashed_again_never_stored() -> None:
    (row,) = curate([join(log("r1"), fb("r1", "thumbs", True))]).rows
    assert row.user_hashes == (hash_user("user-hash-r1", "loopwatch-user"),)
    assert "user-hash-r1" not in row.model_dump_json()
    salted = curate([join(log("r1"), fb("r1", "thumbs", True))], CurationConfig(user_hash_salt="other")).rows[
        0
    ]
    assert salted.user_hashes != row.user_hashes


def test_pii_is_redacted_before_rows_exist_and_counted() -> None:
    records = [
        join(
            log(
                "r1",
                "Write to help@example.com or call +1 (555) 123-4567.",
                prompt="My card 4111 1111 1111 1111 was charged twice",
            ),
            fb("r1", "thumbs", True),
        )
    ]
    (row,) = curate(records).rows
    assert row.prompt[0].content == "My card [CREDIT_CARD] was charged twice"
    assert row.response == "Write to [EMAIL] or call [PHONE]."
    assert row.redactions == {"CREDIT_CARD": 1, "EMAIL": 1, "PHONE": 1}
    assert "4111" not in row.model_dump_json()


def test_extra_patterns_redact_and_count() -> None:
    config = CurationConfig(extra_patterns={"TICKET_ID": r"\bTCK-\d{6}\b"})
    (row,) = curate([join(log("r1", "See TCK-123456 for details."), fb("r1", "thumbs", True))], config).rows
    assert (row.response, row.redactions) == ("See [TICKET_ID] for details.", {"TICKET_ID": 1})


def test_replay_in_any_order_gives_the_same_rows() -> None:
    records = [
        join(log("r1"), fb("r1", "correction", correction=FIX)),
        join(log("r2", BAD, version="v2"), fb("r2", "thumbs", True), 1),
    ]
    forward = {r.row_id: r for r in curate(records).rows}
    backward = {r.row_id: r for r in curate(list(reversed(records))).rows}
    assert forward == backward
    assert sorted((r.kind, r.label) for r in forward.values()) == [
        ("golden", "thumbs_up"),
        ("preference", "correction_vs_original"),
        ("preference", "opposite_feedback"),
        ("sft", "correction"),
    ]


def test_duplicate_feedback_event_counts_once() -> None:
    record = join(log("r1"), fb("r1", "thumbs", True))
    (row,) = curate([record, record]).rows
    assert row.feedback_event_ids == ("fb-thumbs-r1-0",)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("extra_patterns", {"lower": "x"}, "UPPER_SNAKE_CASE"),
        ("extra_patterns", {"BROKEN": "("}, "does not compile"),
        ("extra_patterns", {"EMAIL": "x"}, "built in"),
        ("max_pairs_per_prompt", 0, "greater than or equal to 1"),
        ("enabled", ["sft", "nonsense"], "Input should be"),
        ("retension_days", 3, "Extra inputs are not permitted"),
    ],
)
def test_config_refuses_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CurationConfig.model_validate({field: value})


def test_config_fingerprint_is_stable_and_sensitive() -> None:
    a = CurationConfig(enabled=frozenset({"sft", "golden"}))
    b = CurationConfig(enabled=frozenset({"golden", "sft"}))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != CurationConfig(enabled=frozenset({"sft"})).fingerprint()


def test_normalise() -> None:
    assert normalise("\uff28\uff45\uff4c\uff4c\uff4f\tWORLD\n") == "hello world"
