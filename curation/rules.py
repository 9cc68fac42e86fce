"""Curation rules: joined inference + feedback in, redacted dataset rows out.

Pure functions, no I/O: the stream layer calls :func:`curate` on a batch of
:class:`~schemas.events.JoinedFeedback` and hands the rows to the store.

- SFT candidates: negative feedback that carries a correction -> the prompt
  turns with the corrected assistant reply.
- Preference pairs: a correction against the original reply, and two replies to
  the same normalised prompt (same model, any versions) with opposite feedback.
- Golden eval set: replies rated positively (thumbs up, or a rating at or above
  ``golden_min_rating``) and nothing negative.
- Safety review: requests the toxicity detectors flagged, with their scores.
  Flagged requests never become SFT or golden rows: a flagged exchange is not
  an example of the behaviour to train or to evaluate against.

Row ids are deterministic (kind + the feedback event ids or request ids the row
came from), so replaying a batch yields the same rows; the content hash of the
redacted, normalised content is the de-duplication key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from curation.config import CurationConfig
from curation.redact import Redacted, Redactor, redactor_for
from curation.rows import (
    CuratedRow,
    DatasetKind,
    Message,
    SourceLineage,
    ToxicityLineage,
    ToxicityVerdict,
)
from schemas.events import Feedback, InferenceLog, JoinedFeedback, SourceRef

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class RequestFeedback:
    """One request with every piece of feedback it received in the batch."""

    inference: InferenceLog
    inference_source: SourceRef
    feedback: tuple[tuple[Feedback, SourceRef], ...]
    prompt: tuple[Message, ...]  # the inference's prompt as chat turns, computed once


@dataclass(frozen=True, slots=True)
class Draft:
    """A row before redaction and hashing: what a rule decided to keep."""

    kind: DatasetKind
    key: tuple[str, ...]  # the ids the row id is derived from
    label: str
    requests: tuple[RequestFeedback, ...]  # the chosen (or only) request first
    feedback: tuple[Feedback, ...]  # the feedback that made the rule fire
    prompt: tuple[Message, ...]
    response: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    verdicts: tuple[ToxicityVerdict, ...] = ()


@dataclass(frozen=True, slots=True)
class CurationResult:
    """The rows to store, and what was left out on the way."""

    rows: list[CuratedRow]
    duplicates: int = 0
    redactions: dict[str, int] = field(default_factory=dict)


def normalise(text: str) -> str:
    """Unicode-compatible, case-folded, whitespace-collapsed text: the form hashes are taken of.

    >>> normalise("  Hello\\u00a0 WORLD ")
    'hello world'
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def stable_hash(*parts: str) -> str:
    """A hex SHA-256 of the parts, separated so that ("ab", "c") differs from ("a", "bc")."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def hash_user(user_id: str, salt: str) -> str:
    """The stored form of a user id: hashed again with a salt, so it never joins to other systems."""
    return stable_hash(salt, user_id)[:32]


def prompt_turns(log: InferenceLog) -> tuple[Message, ...]:
    """The prompt as chat turns; a plain-text prompt is one user turn."""
    if log.prompt is None:
        return ()
    if isinstance(log.prompt, str):
        return (Message(role="user", content=log.prompt),) if log.prompt.strip() else ()
    return tuple(Message(role=m.role, content=m.content) for m in log.prompt)


def prompt_key(model: str, prompt: Sequence[Message]) -> str:
    """Hash of the model name and normalised prompt: replies sharing it answered the same prompt."""
    return stable_hash(model, json.dumps([(m.role, normalise(m.content)) for m in prompt]))


def group_by_request(records: Iterable[JoinedFeedback]) -> list[RequestFeedback]:
    """Records of the same request_id together, in first-seen order; a repeated feedback event is dropped."""
    grouped: dict[str, list[JoinedFeedback]] = defaultdict(list)
    for record in records:
        grouped[record.request_id].append(record)
    requests = []
    for items in grouped.values():
        seen: set[str] = set()
        feedback = []
        for item in items:
            if item.feedback.event_id not in seen:
                seen.add(item.feedback.event_id)
                feedback.append((item.feedback, item.feedback_source))
        inference = items[0].inference
        requests.append(
            RequestFeedback(inference, items[0].inference_source, tuple(feedback), prompt_turns(inference))
        )
    return requests


def is_positive(feedback: Feedback, config: CurationConfig) -> bool:
    """Thumbs up, or a rating at or above the golden threshold."""
    if feedback.kind == "thumbs":
        return feedback.value in (True, 1)
    return feedback.kind == "rating" and _rating(feedback) >= config.golden_min_rating


def is_negative(feedback: Feedback, config: CurationConfig) -> bool:
    """Thumbs down, a correction, a flag, or a rating at or below the negative threshold."""
    if feedback.kind == "rating":
        return _rating(feedback) <= config.negative_max_rating
    return feedback.is_negative()


def _rating(feedback: Feedback) -> float:
    return float(feedback.value) if isinstance(feedback.value, int | float) else float("nan")


def polarity(request: RequestFeedback, config: CurationConfig) -> int:
    """+1 when only positive feedback, -1 when only negative, 0 when mixed or neutral."""
    positive = any(is_positive(f, config) for f, _ in request.feedback)
    negative = any(is_negative(f, config) for f, _ in request.feedback)
    return int(positive) - int(negative)


def _has_reply(log: InferenceLog) -> bool:
    return log.status == "ok" and bool(log.response and log.response.strip())


def sft_drafts(request: RequestFeedback, config: CurationConfig) -> list[Draft]:
    """One SFT candidate per negative feedback that carries a correction differing from the reply."""
    prompt = request.prompt
    original = normalise(request.inference.response or "")
    return [
        Draft(
            kind="sft",
            key=(feedback.event_id,),
            label="correction",
            requests=(request,),
            feedback=(feedback,),
            prompt=prompt,
            response=feedback.correction,
        )
        for feedback, _ in request.feedback
        if prompt
        and feedback.correction
        and is_negative(feedback, config)
        and normalise(feedback.correction) != original
    ]


def correction_pair_drafts(request: RequestFeedback, config: CurationConfig) -> list[Draft]:
    """A preference pair per correction: the correction is chosen over the original reply."""
    if not _has_reply(request.inference):
        return []
    return [
        Draft(
            kind="preference",
            key=("correction", draft.key[0]),
            label="correction_vs_original",
            requests=(request,),
            feedback=draft.feedback,
            prompt=draft.prompt,
            chosen=draft.response,
            rejected=request.inference.response,
        )
        for draft in sft_drafts(request, config)
    ]


def golden_draft(request: RequestFeedback, config: CurationConfig) -> Draft | None:
    """The reply as a golden example when its feedback is positive and nothing is negative."""
    prompt = request.prompt
    if not prompt or not _has_reply(request.inference) or polarity(request, config) != 1:
        return None
    positive = tuple(f for f, _ in request.feedback if is_positive(f, config))
    return Draft(
        kind="golden",
        key=(request.inference.request_id,),
        label="+".join(sorted({"thumbs_up" if f.kind == "thumbs" else "high_rating" for f in positive})),
        requests=(request,),
        feedback=positive,
        prompt=prompt,
        response=request.inference.response,
    )


def safety_draft(request: RequestFeedback, verdict: ToxicityVerdict | None) -> Draft | None:
    """The exchange for human review when a toxicity detector flagged its prompt or reply."""
    if verdict is None or not verdict.flagged:
        return None
    return Draft(
        kind="safety_review",
        key=(request.inference.request_id,),
        label="+".join(sorted({flag.label for flag in verdict.flags})),
        requests=(request,),
        feedback=tuple(f for f, _ in request.feedback),
        prompt=request.prompt,
        response=request.inference.response,
        verdicts=(verdict,),
    )


def opposite_feedback_pairs(
    requests: Sequence[RequestFeedback], config: CurationConfig, verdicts: Mapping[str, ToxicityVerdict]
) -> list[Draft]:
    """Pairs of replies to the same normalised prompt, one liked and one disliked, capped per prompt."""
    by_prompt: dict[str, list[RequestFeedback]] = defaultdict(list)
    for request in requests:
        if request.prompt and _has_reply(request.inference):
            by_prompt[prompt_key(request.inference.model.name, request.prompt)].append(request)
    drafts = []
    for group in by_prompt.values():
        ordered = sorted(group, key=lambda r: (r.inference.timestamp, r.inference.request_id))
        liked = [r for r in ordered if polarity(r, config) == 1]
        disliked = [r for r in ordered if polarity(r, config) == -1]
        pairs = (
            (good, bad)
            for good, bad in itertools.product(liked, disliked)
            if normalise(good.inference.response or "") != normalise(bad.inference.response or "")
        )
        for good, bad in itertools.islice(pairs, config.max_pairs_per_prompt):
            drafts.append(
                Draft(
                    kind="preference",
                    key=("pair", good.inference.request_id, bad.inference.request_id),
                    label="opposite_feedback",
                    requests=(good, bad),
                    feedback=tuple(f for f, _ in good.feedback if is_positive(f, config))
                    + tuple(f for f, _ in bad.feedback if is_negative(f, config)),
                    prompt=good.prompt,
                    chosen=good.inference.response,
                    rejected=bad.inference.response,
                    verdicts=tuple(
                        v
                        for v in (verdicts.get(r.inference.request_id) for r in (good, bad))
                        if v is not None
                    ),
                )
            )
    return drafts


def drafts_for(
    records: Iterable[JoinedFeedback], config: CurationConfig, verdicts: Mapping[str, ToxicityVerdict]
) -> list[Draft]:
    """Every rule applied to a batch, before redaction: the testable heart of curation."""
    requests = group_by_request(records)
    drafts: list[Draft] = []
    for request in requests:
        verdict = verdicts.get(request.inference.request_id)
        flagged = verdict is not None and verdict.flagged
        if (draft := safety_draft(request, verdict)) is not None:
            drafts.append(draft)
        if not flagged:
            drafts += sft_drafts(request, config)
            if (golden := golden_draft(request, config)) is not None:
                drafts.append(golden)
        for pair in correction_pair_drafts(request, config):
            drafts.append(dataclasses.replace(pair, verdicts=(verdict,)) if verdict else pair)
    drafts += opposite_feedback_pairs(requests, config, verdicts)
    return [d for d in drafts if d.kind in config.enabled]


class _Redacting:
    """Redacts the texts of one draft, summing the counts per kind."""

    def __init__(self, redactor: Redactor, cache: dict[str, Redacted] | None = None) -> None:
        self.redactor = redactor
        self.counts: Counter[str] = Counter()
        # One prompt or reply feeds several rows (golden, pairs): redact it once per batch.
        self.cache = {} if cache is None else cache

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        result = self.cache.get(text)
        if result is None:
            result = self.cache[text] = self.redactor.redact(text)
        self.counts.update(result.counts)
        return result.text


def _lineage(requests: Sequence[RequestFeedback], feedback: Sequence[Feedback]) -> tuple[SourceLineage, ...]:
    used = {f.event_id for f in feedback}
    sources = []
    for request in requests:
        log = request.inference
        sources.append(
            SourceLineage(
                role="inference",
                event_id=log.event_id,
                request_id=log.request_id,
                topic=request.inference_source.topic,
                partition=request.inference_source.partition,
                offset=request.inference_source.offset,
            )
        )
        sources += [
            SourceLineage(
                role="feedback",
                event_id=f.event_id,
                request_id=f.request_id,
                topic=ref.topic,
                partition=ref.partition,
                offset=ref.offset,
            )
            for f, ref in request.feedback
            if f.event_id in used
        ]
    return tuple(sources)


def finalise(
    draft: Draft,
    config: CurationConfig,
    redactor: Redactor,
    config_hash: str = "",
    cache: dict[str, Redacted] | None = None,
) -> CuratedRow:
    """Redact a draft, hash its content and user ids, and attach its lineage."""
    scrub = _Redacting(redactor, cache)
    # model_construct: role and content come from validated turns, and redaction keeps them strings.
    prompt = tuple(Message.model_construct(role=m.role, content=scrub(m.content) or "") for m in draft.prompt)
    response, chosen, rejected = scrub(draft.response), scrub(draft.chosen), scrub(draft.rejected)
    content = json.dumps(
        [
            [(m.role, normalise(m.content)) for m in prompt],
            *(normalise(t or "") for t in (response, chosen, rejected)),
        ]
    )
    first = draft.requests[0].inference
    rejected_log = draft.requests[1].inference if len(draft.requests) > 1 else None
    return CuratedRow(
        row_id=stable_hash(draft.kind, *draft.key)[:32],
        content_hash=stable_hash(draft.kind, content)[:32],
        kind=draft.kind,
        model=first.model.name,
        model_version=first.model.version,
        rejected_model_version=rejected_log.model.version if rejected_log else None,
        event_time=min(r.inference.timestamp for r in draft.requests),
        request_id=first.request_id,
        label=draft.label,
        prompt=prompt,
        response=response,
        chosen=chosen,
        rejected=rejected,
        feedback_event_ids=tuple(sorted(f.event_id for f in draft.feedback)),
        sources=_lineage(draft.requests, draft.feedback),
        toxicity=tuple(
            ToxicityLineage(
                request_id=v.request_id,
                detector_id=v.detector_id,
                target=f.target,
                label=f.label,
                score=f.score,
            )
            for v in draft.verdicts
            for f in v.flags
        ),
        user_hashes=tuple(
            sorted({hash_user(f.user_id, config.user_hash_salt) for f in draft.feedback if f.user_id})
        ),
        redactions=dict(sorted(scrub.counts.items())),
        config_hash=config_hash or config.fingerprint(),
    )


def dedupe(rows: Iterable[CuratedRow]) -> tuple[list[CuratedRow], int]:
    """The first row of each (kind, content hash), and how many later copies were dropped."""
    kept: dict[tuple[str, str], CuratedRow] = {}
    dropped = 0
    for row in rows:
        key = (row.kind, row.content_hash)
        if key in kept:
            dropped += 1
        else:
            kept[key] = row
    return list(kept.values()), dropped


def curate(
    records: Iterable[JoinedFeedback],
    config: CurationConfig | None = None,
    verdicts: Mapping[str, ToxicityVerdict] | None = None,
) -> CurationResult:
    """Apply the rules to a batch of joined feedback: redacted, de-duplicated rows with lineage."""
    config = config or CurationConfig()
    redactor = redactor_for(config.extra_patterns)
    fingerprint = config.fingerprint()
    drafts = drafts_for(records, config, verdicts or {})
    cache: dict[str, Redacted] = {}
    rows = [finalise(draft, config, redactor, fingerprint, cache) for draft in drafts]
    unique, dropped = dedupe(rows)
    totals: Counter[str] = Counter()
    for row in unique:
        totals.update(row.redactions)
    return CurationResult(unique, dropped, dict(sorted(totals.items())))
