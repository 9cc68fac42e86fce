"""The committed JSON Schema files match the models."""

from __future__ import annotations

import json

from schemas.events import PUBLISHED
from schemas.generate import SCHEMA_DIR, render


def test_committed_json_schemas_match_the_models():
    rendered = render()
    stale = [
        name
        for name, text in rendered.items()
        if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_text() != text
    ]
    assert not stale, f"run `python -m schemas.generate`: {stale} differ from the models"
    assert len(rendered) == len(PUBLISHED)


def test_schema_files_carry_limits_and_forbid_extra_fields():
    schema = json.loads((SCHEMA_DIR / "inference_log.v1.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["labels"]["maxProperties"] == 32
    assert "request_id" in schema["required"] and "schema_version" in schema["required"]
