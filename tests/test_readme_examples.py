"""The example events in the README are accepted by ingest as they stand."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.events import Feedback, InferenceLog
from streams.ingest import Accepted, decode

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_example_inference_and_feedback_are_accepted() -> None:
    block = re.search(r"One inference log.*?```json\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README's example events are gone"
    inference, feedback = (" ".join(lines.split("\n")) for lines in block.group(1).strip().split("\n{"))
    for raw, model in ((inference, InferenceLog), ("{" + feedback, Feedback)):
        outcome = decode(raw.encode(), model, max_bytes=1 << 20)
        assert isinstance(outcome, Accepted), outcome
