"""Real traffic for the demo, tests and benchmarks, built from ``../shared/data``.

Prompts, replies and human feedback are real (Anthropic HH-RLHF, OpenAssistant
oasst1); only the serving metadata (latency, cost, timestamps) is synthesised,
deterministically from a seed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

MODEL = "support-assistant"
STABLE_VERSION = "2026-10-01"


@dataclass(frozen=True)
class Exchange:
    """One real prompt and reply, with the human feedback it received."""

    request_id: str
    source: str  # which dataset it came from
    prompt: list[dict[str, str]]  # chat turns, ending with the user's
    response: str
    thumbs_up: bool | None = None
    rating: int | None = None


def require(data_dir: Path, relative: str) -> Path:
    """The path of a sample file, or a clear error naming the setting to fix."""
    path = data_dir / relative
    if not path.exists():
        raise ConfigError(
            f"sample data not found: {path}. Point LOOPWATCH_SAMPLE_DATA at the shared data "
            "folder (it holds hh_rlhf/, oasst1/, jigsaw/ and drift/)."
        )
    return path


def _transcript_turns(transcript: str) -> list[dict[str, str]]:
    turns = []
    for chunk in transcript.split("\n\nHuman: ")[1:]:
        human, _, assistant = chunk.partition("\n\nAssistant: ")
        turns.append({"role": "user", "content": human.strip()})
        if assistant:
            turns.append({"role": "assistant", "content": assistant.strip()})
    return turns


def hh_rlhf(data_dir: Path) -> Iterator[tuple[Exchange, Exchange]]:
    """(chosen, rejected) exchanges: the human preferred the first reply over the second."""
    with gzip.open(require(data_dir, "hh_rlhf/harmless-base_test.jsonl.gz"), "rt") as lines:
        for n, line in enumerate(lines):
            pair = json.loads(line)
            chosen, rejected = (
                _transcript_turns(pair["chosen"]),
                _transcript_turns(pair["rejected"]),
            )
            if len(chosen) < 2 or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
                continue
            prompt = chosen[:-1]
            yield (
                Exchange(f"hh-{n}-chosen", "hh-rlhf", prompt, chosen[-1]["content"], thumbs_up=True),
                Exchange(f"hh-{n}-rejected", "hh-rlhf", prompt, rejected[-1]["content"], thumbs_up=False),
            )


def oasst1(data_dir: Path) -> Iterator[Exchange]:
    """Every assistant reply in the oasst1 trees, with its emoji votes and sibling rank."""
    with require(data_dir, "oasst1/en_100_tree.jsonl").open() as lines:
        for line in lines:
            yield from _walk(json.loads(line)["prompt"], [])


def _walk(message: dict[str, Any], history: list[dict[str, str]]) -> Iterator[Exchange]:
    role = "user" if message["role"] == "prompter" else "assistant"
    turns = [*history, {"role": role, "content": message["text"]}]
    if role == "assistant" and history:
        emojis = message.get("emojis") or {}
        up, down = emojis.get("+1", 0), emojis.get("-1", 0)
        rank = message.get("rank")
        yield Exchange(
            request_id=f"oa-{message['message_id']}",
            source="oasst1",
            prompt=history,
            response=message["text"],
            thumbs_up=None if up == down else up > down,
            rating=None if rank is None else max(1, 5 - int(rank)),
        )
    for reply in message.get("replies", []):
        yield from _walk(reply, turns)


def inference_event(
    exchange: Exchange, at: datetime, rng: random.Random, *, version: str = STABLE_VERSION
) -> dict[str, Any]:
    """An InferenceLog for a real exchange; latency and cost are synthesised from its length."""
    prompt_tokens = sum(len(t["content"]) for t in exchange.prompt) // 4 + 1
    completion_tokens = len(exchange.response) // 4 + 1
    return {
        "schema_version": "1",
        "event_id": f"inf-{exchange.request_id}",
        "request_id": exchange.request_id,
        "timestamp": at.isoformat(),
        "model": {"name": MODEL, "version": version},
        "app": "support-bot",
        "route": "chat",
        "tenant": exchange.source,
        "prompt": exchange.prompt,
        "response": exchange.response,
        "latency_ms": round(180 + 12 * completion_tokens * rng.uniform(0.8, 1.3), 1),
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens},
        "cost_usd": round((prompt_tokens * 0.15 + completion_tokens * 0.6) / 1e6, 8),
        "status": "ok",
    }


def feedback_events(exchange: Exchange, at: datetime) -> list[dict[str, Any]]:
    """The thumbs and rating feedback a real exchange received (possibly none)."""
    user = "u" + hashlib.sha256(exchange.request_id.encode()).hexdigest()[:16]
    events: list[tuple[str, bool | int]] = []
    if exchange.thumbs_up is not None:
        events.append(("thumbs", exchange.thumbs_up))
    if exchange.rating is not None:
        events.append(("rating", exchange.rating))
    return [
        {
            "schema_version": "1",
            "event_id": f"fb-{kind}-{exchange.request_id}",
            "request_id": exchange.request_id,
            "timestamp": (at + timedelta(seconds=5)).isoformat(),
            "kind": kind,
            "value": value,
            "source": "user",
            "user_id": user,
        }
        for kind, value in events
    ]


def now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)
