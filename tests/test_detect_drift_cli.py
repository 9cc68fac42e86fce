"""``loopwatch detect drift`` on real data (Elec2), through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from services.cli import main

ELEC2_COLUMNS = ["date", "day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]


@pytest.fixture(scope="module")
def elec2_files(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Elec2 windows in the three file kinds: the first and last 5,000 half-hours, and two random halves."""
    data = pd.read_csv(data_dir / "drift" / "elec2_data.dat", sep=" ", names=ELEC2_COLUMNS)
    folder = tmp_path_factory.mktemp("elec2")
    shuffled = data.iloc[np.random.default_rng(0).permutation(len(data))]
    files = {
        "early": folder / "early.csv",
        "late": folder / "late.parquet",
        "half_a": folder / "half_a.jsonl",
        "half_b": folder / "half_b.csv",
    }
    data.iloc[:5000].to_csv(files["early"], index=False)
    data.iloc[-5000:].to_parquet(files["late"])
    shuffled.iloc[:5000].to_json(files["half_a"], orient="records", lines=True)
    shuffled.iloc[5000:10_000].to_csv(files["half_b"], index=False)
    return files


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["detect", "drift", *map(str, args)])


def test_early_against_late_elec2_is_drift(elec2_files: dict[str, Path]) -> None:
    result = _run("--reference", elec2_files["early"], "--current", elec2_files["late"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["drift"] is True
    tests = {test["column"]: test for test in report["tests"]}
    assert set(tests) == set(ELEC2_COLUMNS)
    assert {test["test"] for test in tests.values()} == {"ks"}
    # The date only grows, so the two windows do not overlap at all; prices and demand moved too.
    assert tests["date"]["statistic"] == 1.0 and tests["date"]["drift"] is True
    assert tests["vicdemand"]["drift"] is True and tests["vicdemand"]["effect_size"] > 0.3
    for test in tests.values():
        assert set(test) >= {
            "column",
            "test",
            "statistic",
            "p_value",
            "effect_size",
            "threshold",
            "drift",
            "verdict",
        }
        assert test["drift"] == (test["verdict"] == "drift")


def test_a_random_split_of_elec2_is_not_drift(elec2_files: dict[str, Path]) -> None:
    result = _run("--reference", elec2_files["half_a"], "--current", elec2_files["half_b"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["drift"] is False
    assert not any(test["drift"] for test in report["tests"])
    assert report["reference_rows"] == report["current_rows"] == 5000


def test_columns_option_and_text_format(elec2_files: dict[str, Path]) -> None:
    result = _run(
        "--reference", elec2_files["early"], "--current", elec2_files["late"],
        "--columns", "day, nswdemand", "--format", "text", "--correction", "bonferroni",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "column",
        "test",
        "statistic",
        "p_value",
        "p_adj",
        "effect",
        "threshold",
        "verdict",
    ]
    assert lines[2].split()[:2] == ["day", "ks"] and lines[2].split()[-1] == "ok"
    assert lines[3].split()[:2] == ["nswdemand", "ks"] and lines[3].split()[-1] == "DRIFT"
    assert "DRIFT: 1 of 2 tests drifted" in result.output and "bonferroni correction" in result.output


def test_html_report_is_written_when_drift_is_found(elec2_files: dict[str, Path], tmp_path: Path) -> None:
    html = tmp_path / "evidence.html"
    result = _run(
        "--reference", elec2_files["early"], "--current", elec2_files["late"],
        "--columns", "nswdemand", "--html-report", html,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert html.stat().st_size > 50_000 and "nswdemand" in html.read_text()


@pytest.mark.parametrize(
    ("reference", "current", "extra", "message"),
    [
        ("early", "missing.csv", [], "no such file"),
        ("early", "notes.txt", [], "unknown file kind"),
        ("early", "late", ["--columns", "date,price"], "no column 'price'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    elec2_files: dict[str, Path], tmp_path: Path, reference: str, current: str, extra: list[str], message: str
) -> None:
    def path(name: str) -> Path:
        return elec2_files.get(name, tmp_path / name)

    (tmp_path / "notes.txt").write_text("a,b\n1,2\n")
    result = _run("--reference", path(reference), "--current", path(current), *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
