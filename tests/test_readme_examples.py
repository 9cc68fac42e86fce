"""The example events in the README are accepted by ingest and by the JSON Schema files as they stand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

from schemas.events import Feedback, InferenceLog
from schemas.generate import SCHEMA_DIR
from streams.ingest import Accepted, decode

from .strict_json import strict_loads

README = Path(__file__).resolve().parent.parent / "README.md"


def _examples() -> tuple[str, str]:
    """The README's example inference log and feedback, each as one line of JSON."""
    block = re.search(r"One inference log.*?```json\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README's example events are gone"
    inference, feedback = (" ".join(lines.split("\n")) for lines in block.group(1).strip().split("\n{"))
    return inference, "{" + feedback


def test_the_readme_example_inference_and_feedback_are_accepted() -> None:
    inference, feedback = _examples()
    for outcome in (
        decode(inference.encode(), InferenceLog, max_bytes=1 << 20),
        decode(feedback.encode(), Feedback, max_bytes=1 << 20),
    ):
        assert isinstance(outcome, Accepted), outcome


def test_the_readme_examples_validate_against_the_published_schemas() -> None:
    """What a non-Python producer checks its events with (trial 17g: the example lacked two fields)."""
    for raw, name in zip(_examples(), ("inference_log", "feedback"), strict=True):
        schema = json.loads((SCHEMA_DIR / f"{name}.v1.json").read_text())
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        errors = [error.message for error in validator.iter_errors(strict_loads(raw.encode()))]
        assert not errors, (name, errors)


def test_the_readme_example_inference_shows_features_and_prediction() -> None:
    """The optional model inputs and output are in the example (trial 17g looked for them there)."""
    inference = strict_loads(_examples()[0].encode())
    assert inference.get("features") and inference.get("prediction") is not None, inference
