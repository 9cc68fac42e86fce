"""``loopwatch dataset`` export / stats / snapshot on real Delta tables, and the strict format validators."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from curation.export import ChatExample, PreferenceExample, validate_line
from curation.rows import ToxicityFlag, ToxicityVerdict
from curation.rules import curate
from curation.store import DatasetStore
from services import sample_data
from services.cli import main

from .test_curation_rules import fb, join, log
from .test_dataset_store import NOW, real_records


@pytest.fixture
def root(tmp_path: Path, exchanges: list[sample_data.Exchange]) -> Path:
    """A dataset root with all four tables, written from real traffic in two batches."""
    records = real_records(exchanges)
    records.append(
        join(
            log("corr-1", "Call me on +44 20 7946 0958", prompt=exchanges[0].prompt),
            fb("corr-1", "correction", correction="I'd rather not share phone numbers."),
            999,
        )
    )
    flagged = exchanges[3].request_id
    verdicts = {
        flagged: ToxicityVerdict(
            request_id=flagged, flags=(ToxicityFlag(target="prompt", label="insult", score=0.7),)
        )
    }
    rows = curate(records, verdicts=verdicts).rows
    store = DatasetStore(tmp_path / "datasets")
    store.write(rows[: len(rows) // 2], now=NOW)
    store.write(rows, now=NOW)
    return tmp_path / "datasets"


def run(*args: str) -> str:
    """Invoke the CLI in-process; fail with its output when it fails."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def plain_lines(path: Path) -> list[dict[str, object]]:
    """Read JSONL the simplest way: one json.loads per line."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


@pytest.mark.parametrize("table", ["sft", "golden", "safety_review", "preference"])
def test_exported_jsonl_round_trips_through_the_strict_validator(
    root: Path, tmp_path: Path, table: str
) -> None:
    output = tmp_path / f"{table}.jsonl"
    said = run(
        "dataset",
        "export",
        "--table",
        table,
        "--format",
        "jsonl",
        "--output",
        str(output),
        "--root",
        str(root),
    )
    stored = DatasetStore(root).read(table)  # type: ignore[arg-type]
    assert f"exported {stored.num_rows} rows of {table}@" in said
    text_lines = output.read_text(encoding="utf-8").splitlines()
    examples = [validate_line(table, line) for line in text_lines]  # type: ignore[arg-type]
    assert len(examples) == stored.num_rows > 0
    # Re-serialising the validated example gives the same JSON: nothing was coerced or dropped.
    assert [json.loads(line) for line in text_lines] == [e.model_dump() for e in examples]
    plain = plain_lines(output)
    frame = pd.read_json(output, lines=True)
    assert len(plain) == len(frame) == stored.num_rows
    if table == "preference":
        assert list(frame.columns) == ["prompt", "chosen", "rejected"]
        assert all(p["chosen"][0]["role"] == "assistant" for p in plain)  # type: ignore[index]
    else:
        assert list(frame.columns) == ["messages"]
        assert all(m["messages"][-1]["role"] == "assistant" for m in plain)  # type: ignore[index]


def test_sft_export_holds_the_redacted_correction(root: Path, tmp_path: Path) -> None:
    output = tmp_path / "sft.jsonl"
    run("dataset", "export", "--table", "sft", "--output", str(output), "--root", str(root))
    (line,) = plain_lines(output)
    assert line["messages"][-1] == {"role": "assistant", "content": "I'd rather not share phone numbers."}  # type: ignore[index]
    pairs = tmp_path / "pairs.jsonl"
    run("dataset", "export", "--table", "preference", "--output", str(pairs), "--root", str(root))
    rejected = [p["rejected"][0]["content"] for p in plain_lines(pairs)]  # type: ignore[index]
    assert "Call me on [PHONE]" in rejected
    assert "7946" not in pairs.read_text()


def test_tagged_version_exports_the_same_rows_after_appends(
    root: Path, tmp_path: Path, exchanges: list[sample_data.Exchange]
) -> None:
    said = run("dataset", "snapshot", "--table", "golden", "--tag", "retrain-1", "--root", str(root))
    version = int(said.split("@")[1].split()[0])
    first = tmp_path / "first.jsonl"
    run(
        "dataset",
        "export",
        "--table",
        "golden",
        "--tag",
        "retrain-1",
        "--output",
        str(first),
        "--root",
        str(root),
    )
    more = [
        join(log(f"late{i}", f"late reply {i}"), fb(f"late{i}", "thumbs", True), 5000 + i) for i in range(5)
    ]
    DatasetStore(root).write(curate(more).rows, now=NOW)
    again = tmp_path / "again.jsonl"
    run(
        "dataset",
        "export",
        "--table",
        "golden",
        "--version",
        str(version),
        "--output",
        str(again),
        "--root",
        str(root),
    )
    latest = tmp_path / "latest.jsonl"
    run("dataset", "export", "--table", "golden", "--output", str(latest), "--root", str(root))
    assert again.read_text() == first.read_text()
    assert len(plain_lines(latest)) == len(plain_lines(first)) + 5


def test_parquet_export_keeps_lineage(root: Path, tmp_path: Path) -> None:
    output = tmp_path / "golden.parquet"
    run(
        "dataset",
        "export",
        "--table",
        "golden",
        "--format",
        "parquet",
        "--output",
        str(output),
        "--root",
        str(root),
    )
    table = pq.read_table(output)
    assert table.num_rows == DatasetStore(root).read("golden").num_rows
    frame = table.to_pandas()
    assert {"row_id", "sources", "feedback_event_ids", "toxicity", "redactions", "model_version"} <= set(
        frame.columns
    )
    for sources, feedback_ids in zip(frame["sources"], frame["feedback_event_ids"], strict=True):
        assert sources[0]["role"] == "inference"
        assert sorted(s["event_id"] for s in sources if s["role"] == "feedback") == sorted(feedback_ids)


def test_stats_counts_by_model_label_and_redactions(root: Path) -> None:
    report = json.loads(run("dataset", "stats", "--json", "--root", str(root)))
    by_table = {r["table"]: r for r in report}
    assert set(by_table) == {"sft", "preference", "golden", "safety_review"}
    store = DatasetStore(root)
    for name, entry in by_table.items():
        frame = store.read(name).to_pandas()
        assert entry["rows"] == len(frame)
        assert entry["by_label"] == frame["label"].value_counts().to_dict()
        assert sum(entry["by_model"].values()) == len(frame)
        totals: dict[str, int] = {}
        for entries in frame["redactions"]:
            for item in entries:
                totals[item["kind"]] = totals.get(item["kind"], 0) + item["count"]
        assert entry["redactions"] == dict(sorted(totals.items()))
    assert by_table["preference"]["redactions"]["PHONE"] >= 1
    assert by_table["safety_review"]["by_label"] == {"insult": 1}
    text = run("dataset", "stats", "golden", "--root", str(root))
    assert text.startswith("golden@") and "by label: thumbs_up=" in text


def test_bad_table_version_and_tag_are_clear_errors(root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "x.jsonl")
    bad_version = runner.invoke(
        main, ["dataset", "export", "--table", "sft", "--version", "77", "--output", out, "--root", str(root)]
    )
    assert bad_version.exit_code == 2 and "no version 77" in bad_version.output
    bad_tag = runner.invoke(
        main, ["dataset", "export", "--table", "sft", "--tag", "nope", "--output", out, "--root", str(root)]
    )
    assert bad_tag.exit_code == 2 and "no tag 'nope'" in bad_tag.output
    missing = runner.invoke(main, ["dataset", "stats", "sft", "--root", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "line",
    [
        {"messages": [{"role": "user", "content": "hi"}]},  # no reply
        {
            "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
        },  # ends with user
        {
            "messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]
        },  # unknown role
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},  # empty turn
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},  # not text
        {**GOOD_CHAT, "extra": 1},  # unknown field
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}]},  # no user
    ],
)
def test_chat_validator_is_strict(line: dict[str, object]) -> None:
    ChatExample.model_validate_json(json.dumps(GOOD_CHAT))
    with pytest.raises(ValidationError):
        validate_line("sft", json.dumps(line))


@pytest.mark.parametrize(
    "line",
    [
        {"prompt": "hi", "chosen": "a", "rejected": "b"},  # plain strings are not the chat form
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}]},
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "same"}],
            "rejected": [{"role": "assistant", "content": "same"}],
        },
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "user", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
    ],
)
def test_preference_validator_is_strict(line: dict[str, object]) -> None:
    good = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    PreferenceExample.model_validate_json(json.dumps(good))
    with pytest.raises(ValidationError):
        validate_line("preference", json.dumps(line))
