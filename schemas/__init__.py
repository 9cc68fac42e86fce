"""Event models (pydantic v2), their JSON Schema files, and the shared exception tree."""
