"""Redaction measured on a labelled corpus: precision and recall per kind, and negatives left alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from curation.redact import BUILTIN_KINDS, Redactor, luhn_ok, redact

from .pii_corpus import NEGATIVES, POSITIVES

MIN_RECALL = 0.98


@dataclass(frozen=True)
class Score:
    """Precision and recall of one kind on the corpus."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        """Share of redactions of this kind that were of this kind."""
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        """Share of this kind's items that were redacted whole."""
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


def measure(redactor: Redactor) -> tuple[dict[str, Score], list[str]]:
    """Scores per kind over POSITIVES and NEGATIVES, and a description of every miss."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    misses: list[str] = []
    labelled = [*POSITIVES, *((text, []) for text in NEGATIVES)]
    for text, expected in labelled:
        gold = []
        for kind, value in expected:
            start = text.index(value)
            gold.append((kind, start, start + len(value)))
        spans = redactor.find(text)
        for kind, start, end in gold:
            # Recall counts an item only when it is removed whole, under its own kind.
            if any(s.kind == kind and s.start <= start and s.end >= end for s in spans):
                tp[kind] += 1
            else:
                fn[kind] += 1
                misses.append(f"missed {kind} {text[start:end]!r} in {text!r}: found {spans}")
        for span in spans:
            overlaps = (
                kind == span.kind and span.start < end and start < span.end for kind, start, end in gold
            )
            if not any(overlaps):
                fp[span.kind] += 1
                misses.append(f"wrongly redacted {span.kind} {text[span.start : span.end]!r} in {text!r}")
    kinds = sorted(set(tp) | set(fp) | set(fn))
    return {k: Score(tp[k], fp[k], fn[k]) for k in kinds}, misses


def test_precision_and_recall_per_kind() -> None:
    scores, misses = measure(Redactor())
    print("\nkind              items  precision  recall")
    for kind, score in scores.items():
        items = score.true_positives + score.false_negatives
        print(f"{kind:<17} {items:>5}  {score.precision:>9.3f}  {score.recall:>6.3f}")
    assert set(scores) >= set(BUILTIN_KINDS), "every built-in kind needs corpus examples"
    low = {k: round(s.recall, 3) for k, s in scores.items() if s.recall < MIN_RECALL}
    assert not low, f"recall below {MIN_RECALL}: {low}\n" + "\n".join(misses)
    assert all(s.precision == 1.0 for s in scores.values()), "\n".join(misses)


@pytest.mark.parametrize("text", NEGATIVES)
def test_negatives_are_not_redacted(text: str) -> None:
    result = redact(text)
    assert (result.text, result.counts) == (text, {})


def test_placeholders_and_counts() -> None:
    result = redact("a@b.io, c@d.io, 10.0.0.1 and key AKIAIOSFODNN7EXAMPLE")
    assert result.text == "[EMAIL], [EMAIL], [IPV4] and key [AWS_ACCESS_KEY]"
    assert result.counts == {"EMAIL": 2, "IPV4": 1, "AWS_ACCESS_KEY": 1}


def test_extra_patterns_rank_after_builtins() -> None:
    extra = {"EMPLOYEE_ID": r"\bEMP-\d{5}\b", "ANY_AT": r"\S+@\S+"}
    result = redact("EMP-12345 wrote to x@example.com", extra)
    assert result.text == "[EMPLOYEE_ID] wrote to [EMAIL]"
    assert result.counts == {"EMPLOYEE_ID": 1, "EMAIL": 1}


def test_luhn() -> None:
    numbers = ("79927398713", "79927398710", "378282246310005", "0")
    assert [luhn_ok(n) for n in numbers] == [True, False, True, True]


def test_redaction_is_idempotent_on_its_output() -> None:
    for text, _ in POSITIVES:
        once = redact(text).text
        assert redact(once).text == once
