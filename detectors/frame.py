"""The columns of a detector window, and how events become rows.

Detectors see windows as pandas DataFrames, whether the rows came from the
stream (:func:`inference_row`, :func:`feedback_row`) or from a file given to
``loopwatch detect``. Numeric features an application logs in
``InferenceLog.features`` become columns named ``feature.<name>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from schemas.events import Descriptors, EnrichedInference, InferenceLog, JoinedFeedback

# Identity and segment.
REQUEST_ID = "request_id"
TIMESTAMP = "timestamp"
MODEL = "model"
MODEL_VERSION = "model_version"
APP = "app"
ROUTE = "route"
TENANT = "tenant"

# Text and the descriptors ingest derives from it.
PROMPT = "prompt"
RESPONSE = "response"
PROMPT_CHARS = "prompt_chars"
RESPONSE_CHARS = "response_chars"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
EMPTY_RESPONSE = "empty_response"
REFUSAL = "refusal"

# Serving.
LATENCY_MS = "latency_ms"
COST_USD = "cost_usd"
ERROR = "error"
PREDICTION = "prediction"
FEATURE_PREFIX = "feature."

# Joined feedback (one row per feedback event).
FEEDBACK_KIND = "feedback_kind"
FEEDBACK_VALUE = "feedback_value"
NEGATIVE = "negative"
RATING = "rating"
CORRECTION = "correction"

DESCRIPTOR_COLUMNS = (PROMPT_CHARS, RESPONSE_CHARS, PROMPT_TOKENS, COMPLETION_TOKENS)
FLAG_COLUMNS = (EMPTY_RESPONSE, REFUSAL)


def inference_row(enriched: EnrichedInference) -> dict[str, Any]:
    """One window row for one valid inference."""
    return log_row(enriched.inference, enriched.descriptors)


def log_row(
    event: InferenceLog, descriptors: Descriptors | Mapping[str, Any], text_chars: int | None = None
) -> dict[str, Any]:
    """One window row for an inference log and its descriptors; texts cut to ``text_chars``.

    ``descriptors`` may be the model or its fields (:func:`descriptor_values`, what
    ingest holds): building the model for each row kept cost twice what the row did.
    """
    values = descriptors if isinstance(descriptors, Mapping) else dict(descriptors)
    row: dict[str, Any] = {
        REQUEST_ID: event.request_id,
        TIMESTAMP: event.timestamp,
        MODEL: event.model.name,
        MODEL_VERSION: event.model.version,
        APP: event.app,
        ROUTE: event.route,
        TENANT: event.tenant,
        PROMPT: event.prompt_text()[:text_chars],
        RESPONSE: (event.response or "")[:text_chars],
        PROMPT_CHARS: values["prompt_chars"],
        RESPONSE_CHARS: values["response_chars"],
        PROMPT_TOKENS: values["prompt_tokens"],
        COMPLETION_TOKENS: values["completion_tokens"],
        EMPTY_RESPONSE: values["empty_response"],
        REFUSAL: values["refusal"],
        LATENCY_MS: event.latency_ms,
        COST_USD: event.cost_usd,
        ERROR: event.status == "error",
        PREDICTION: event.prediction,
    }
    for name, value in (event.features or {}).items():
        row[FEATURE_PREFIX + name] = value
    return row


def segment_of(row: dict[str, Any]) -> dict[str, str | None]:
    """The segment a row belongs to (model name and version, app, route, tenant)."""
    return {name: row[name] for name in (MODEL, MODEL_VERSION, APP, ROUTE, TENANT)}


def feedback_row(joined: JoinedFeedback) -> dict[str, Any]:
    """One window row for one feedback event joined to its inference."""
    feedback = joined.feedback
    rating = feedback.value if feedback.kind == "rating" else None
    return {
        REQUEST_ID: joined.request_id,
        TIMESTAMP: feedback.timestamp,
        MODEL: joined.inference.model.name,
        MODEL_VERSION: joined.inference.model.version,
        APP: joined.inference.app,
        ROUTE: joined.inference.route,
        TENANT: joined.inference.tenant,
        FEEDBACK_KIND: feedback.kind,
        FEEDBACK_VALUE: feedback.value,
        NEGATIVE: feedback.is_negative(),
        RATING: float(rating) if isinstance(rating, int | float) else None,
        CORRECTION: feedback.kind == "correction",
    }


# Openings that chat models use to decline; matched on the start of the reply.
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i apologi[sz]e|as an ai\b|"
    r"i (?:can(?:'|no)?t|cannot|won'?t|am not able to|'m not able to|am unable to|'m unable to)"
    r" (?:help|assist|provide|comply|do that|answer|fulfil|support|engage|discuss|create|write|give))",
    re.IGNORECASE,
)
_CHARS_PER_TOKEN = 4  # the usual estimate for English text with BPE tokenizers


def describe(log: InferenceLog) -> Descriptors:
    """Cheap descriptors of one request: lengths, tokens (estimated if absent), empty, refusal.

    >>> from datetime import datetime, timezone
    >>> log = InferenceLog(schema_version="1", event_id="e", request_id="r",
    ...     timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
    ...     model={"name": "m", "version": "1"}, prompt="Hi!", response="I'm sorry, I can't help.")
    >>> d = describe(log)
    >>> (d.prompt_chars, d.prompt_tokens, d.tokens_estimated, d.refusal)
    (3, 1, True, True)
    """
    return Descriptors(**descriptor_values(log))


def descriptor_values(log: InferenceLog) -> dict[str, int | bool]:
    """The fields of :func:`describe`'s Descriptors, in the model's order, as a plain dict.

    Ingest's path per event: it writes them into the enriched JSON as they are
    and builds the model only for the rows its window samples keep. Building and
    validating the model took more than half of describe's time: 5.0 us per
    bench event with it, 2.3 us without (CPU time, best of 7, busy machine).
    """
    prompt = log.prompt_text()
    response = log.response or ""
    if log.tokens is not None:
        prompt_tokens, completion_tokens, estimated = (
            log.tokens.prompt,
            log.tokens.completion,
            False,
        )
    else:
        prompt_tokens = math.ceil(len(prompt) / _CHARS_PER_TOKEN)
        completion_tokens = math.ceil(len(response) / _CHARS_PER_TOKEN)
        estimated = True
    return {
        "prompt_chars": len(prompt),
        "response_chars": len(response),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "tokens_estimated": estimated,
        "empty_response": log.status == "ok" and not response.strip(),
        "refusal": _REFUSAL.match(response[:200]) is not None,
    }
