"""Write the JSON Schema of every published model to ``schemas/jsonschema/``.

Run ``python -m schemas.generate`` after changing a model; a test fails when
the committed files and the models disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import PUBLISHED, SCHEMA_VERSION

SCHEMA_DIR = Path(__file__).parent / "jsonschema"


def render() -> dict[str, str]:
    """File name -> JSON text for every published model."""
    files = {}
    for name, model in PUBLISHED.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://loopwatch.dev/schemas/v{SCHEMA_VERSION}/{name}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        files[f"{name}.v{SCHEMA_VERSION}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main() -> None:
    """Regenerate the committed schema files."""
    SCHEMA_DIR.mkdir(exist_ok=True)
    for file_name, text in render().items():
        (SCHEMA_DIR / file_name).write_text(text)
        print(f"wrote {SCHEMA_DIR / file_name}")


if __name__ == "__main__":
    main()
