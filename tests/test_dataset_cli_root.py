"""`loopwatch dataset stats` reads the tables where the workers write them: LOOPWATCH_DATASETS_ROOT."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main


def test_dataset_stats_reads_loopwatch_datasets_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "shared-datasets"
    monkeypatch.setenv("LOOPWATCH_DATA_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("LOOPWATCH_DATASETS_ROOT", str(root))
    result = CliRunner().invoke(main, ["dataset", "stats"])
    assert result.exit_code == 0, result.output
    assert f"no dataset tables under {root}" in result.output
