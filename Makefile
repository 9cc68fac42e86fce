.PHONY: install test lint demo bench schemas

install:
	python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'

test:
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

demo:
	.venv/bin/loopwatch demo

bench:
	.venv/bin/python bench/ingest_bench.py

schemas:
	.venv/bin/python -m schemas.generate
