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
            "alpha",
            "min_effect_size",
            "drift",
            "verdict",
        }
        assert test["drift"] == (test["verdict"] == "drift")
        assert "threshold" not in test  # it meant alpha for some tests and the minimum effect for others
        assert (test["alpha"], test["min_effect_size"]) == (0.05, 0.1)


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
        "alpha",
        "effect",
        "min_effect",
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


def test_an_embedding_test_shows_alpha_and_minimum_effect_apart() -> None:
    from detectors.base import Finding
    from detectors.files import ColumnFinding, DriftReport, format_table

    # What the embedding detectors return: alpha in ``threshold``, the minimum effect in measurements.
    finding = Finding(
        detector_id="drift.embedding_mmd.v1",
        verdict="drift",
        reference_size=300,
        current_size=300,
        statistic=0.0221,
        p_value=0.001,
        threshold=0.05,
        effect_size=0.0221,
        measurements={"min_effect_size": 0.005, "p_value_adjusted": 0.002},
    )
    test = ColumnFinding(column="text", alpha=0.01, finding=finding)
    assert (test.alpha, test.min_effect_size) == (0.01, 0.005)
    report = DriftReport(
        drift=True, alpha=0.01, correction="bh", reference_rows=300, current_rows=300, tests=[test]
    )
    row = format_table(report).splitlines()[2].split()
    assert row == ["text", "embedding_mmd", "0.0221", "0.001", "0.002", "0.01", "0.0221", "0.005", "DRIFT"]


def test_a_csv_without_header_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("0.1,3,5\n0.2,4,6\n0.3,1,1\n")
    result = _run("--reference", numbers, "--current", numbers)
    assert result.exit_code == 2
    assert "numbers.csv: needs a header row naming its columns; its first line (0.1, 3, 5)" in result.output


def test_files_sharing_no_column_name_are_told_they_need_a_header_row(tmp_path: Path) -> None:
    # Text in the first line cannot be told from a header, but two such files share no name.
    reference, current = tmp_path / "reference.csv", tmp_path / "current.csv"
    reference.write_text("hello,positive\nhi,negative\n")
    current.write_text("bye,negative\nyo,positive\n")
    result = _run("--reference", reference, "--current", current)
    assert result.exit_code == 2
    assert "share no column name (reference: hello, positive; current: bye, negative)" in result.output
    assert "needs a header row" in result.output
