"""The example events in the README are accepted by ingest and by the JSON Schema files as they stand."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema

from schemas.events import Feedback, InferenceLog
from schemas.generate import SCHEMA_DIR
from streams.detect import Judge, References
from streams.detect_parts import load_specs
from streams.ingest import Accepted, decode
from streams.windows import ClosedWindow

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


def test_the_readme_tabular_detectors_file_judges_the_features(tmp_path: Path, data_dir: Path) -> None:
    # Trial 17j: a tabular model's features were judged by no default detector, and the README gave no
    # detectors file for them. The README's example, run on Elec2 rows as the windows' features.
    block = re.search(r"for a\s+price-direction classifier:\n\n```yaml\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README's tabular detectors file is gone"
    path = tmp_path / "detectors.yaml"
    path.write_text(block.group(1))
    specs = load_specs(path)
    rows = [line.split() for line in (data_dir / "drift" / "elec2_data.dat").read_text().splitlines()]
    segment = {"model": "nsw", "model_version": "1", "app": None, "route": None, "tenant": None}

    def window(index: int, first: int) -> ClosedWindow:
        logs = [
            {
                "request_id": f"{index}-{n}",
                "feature.nswprice": float(row[3]),
                "feature.nswdemand": float(row[4]),
            }
            | {"prediction": "up" if float(row[3]) > 0.06 else "down", "error": False, "latency_ms": 20.0}
            for n, row in enumerate(rows[first : first + 400])
        ]
        start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=index)
        return ClosedWindow(segment, "inference", start, start + timedelta(minutes=1), len(logs), logs)

    store = _Store()
    references = References(store)
    store.apply(references.observe(window(0, 0)))
    later = window(1, 30_000)  # a year and a half on: the market moved
    reference = references.for_window(later)
    assert reference is not None
    judge = Judge(specs)
    judged = {
        (j.finding.detector_id, j.config.get("column")): j.finding
        for j in judge.run(later, reference, judge.specs_for("inference", slow=False))
    }
    for column in ("feature.nswprice", "feature.nswdemand"):
        assert judged["drift.ks.v1", column].p_value is not None, judged
    assert judged["drift.chi2.v1", "prediction"].p_value is not None
    assert judged["drift.ks.v1", "feature.nswprice"].verdict == "drift"


class _Store(dict[str, bytes]):
    """The references' store as a plain dict (what the detect stage's table holds)."""

    def apply(self, updates: list[tuple[str, bytes]]) -> None:
        self.update(updates)
