"""Issue 12, trial 12f: the console's last findings of a paged on-call engineer.

The rollback line's span, the Overview's rollback mark, how many dataset versions exist, the
demo policy's own name, the dataset cell and the wide alert table. Each history is a few rows.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.store import PARTITION_BY as DATASET_PARTITION_BY
from curation.store import SCHEMA as DATASET_SCHEMA
from curation.store import DatasetStore
from retrain_trigger.actions import RollbackOutcome
from retrain_trigger.policy import load_policy
from services.console import build_console, create_app
from services.console import datasets as datasets_module
from services.demo.scenario import demo_policy
from tests.console_fixture import _dataset_rows
from tests.test_console_incidents import MODEL, REQUEST, action, at, rollback_request, window, write


def _client(root: str, datasets: str) -> TestClient:
    return TestClient(create_app(build_console(Settings(), history=root, datasets=datasets)))


def _outcome(verified: bool) -> dict[str, object]:
    kind = "verified" if verified else "failed"
    reason = "target v1 is better" if verified else "no window of v1 without v2 within 1h"
    outcome = RollbackOutcome(
        rollback_id=REQUEST,
        model=MODEL,
        from_version="v2",
        target_version="v1",
        verified=verified,
        reason=reason,
    )
    return action(f"{REQUEST}.{kind}", f"rollback.{kind}", at(9), **outcome.model_dump(mode="json"))


def test_the_rollback_line_gives_one_span_from_the_request_to_the_end_of_the_last_window(
    tmp_path: Path,
) -> None:
    """As in the user's run: three 20 s windows after the request's window end, so 60 s, one span."""
    windows = [window("v1", n) for n in range(8)] + [window("v2", n) for n in range(2, 7)]
    root = write(tmp_path, windows=windows, actions=[rollback_request()])
    with _client(root, str(tmp_path)) as client:
        [request] = [a for a in client.get("/api/incidents").json()["actions"] if a["id"] == REQUEST]
        assert request["after"]["lines"] == [
            "v2 kept serving 3 windows (60 s of window time) after the request: 00:43:00-00:44:00"
        ]
        assert "at least" not in client.get("/incidents").text


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ([], "rollback to v1 requested (not verified yet)"),
        ([True], "rolled back to v1 (verified)"),
        ([False], "rollback to v1 failed: no window of v1 without v2 within 1h"),
    ],
)
def test_the_overview_marks_a_rolled_back_version_and_links_its_incident(
    tmp_path: Path, outcomes: list[bool], state: str
) -> None:
    """c2 said only `canary` and `not judged` after its verified rollback: its row now says what happened."""
    windows = [window("v1", n) for n in range(8)] + [window("v2", n) for n in range(2, 7)]
    actions = [rollback_request(), *(_outcome(v) for v in outcomes)]
    root = write(tmp_path, windows=windows, actions=actions)
    with _client(root, str(tmp_path)) as client:
        [model] = client.get("/api/overview").json()["models"]
        rows = {r["model_version"]: r for r in model["versions"]}
        assert rows["v2"]["rollback"] == {"rollback_id": REQUEST, "state": state}
        assert rows["v1"]["rollback"] is None
        html = client.get("/overview").text
        assert f'#{REQUEST}">{state}</a>' in html
        assert f'id="{REQUEST}"' in client.get("/incidents").text  # the link's target


def test_the_retrain_cell_names_the_dataset_version_and_the_alert_table_scrolls_in_its_box(
    tmp_path: Path,
) -> None:
    """`dataset preference@2` looked cut off; the fingerprint column ran past the page."""
    retrain = action(
        "lw-retrain-1", "retrain.requested", at(5), dataset={"table": "preference", "version": 2}, rule="r"
    )
    resolved = {
        "day": at(8).date(),
        "model": MODEL,
        "model_version": "v2",
        "fingerprint": "fp-long",
        "status": "resolved",
        "severity": "critical",
        "summary": "bad replies",
        "labels": "{}",
        "detections": "[]",
        "starts_at": at(4),
        "ends_at": at(8),
        "changed_at": at(8),
    }
    root = write(tmp_path, windows=[window("v2", 1)], actions=[retrain], alerts=[resolved])
    with _client(root, str(tmp_path)) as client:
        html = client.get("/incidents").text
    assert "dataset preference, version 2" in html and "preference@2" not in html
    assert '<div class="scroll-box"><table class="alerts">' in html
    assert "after the one the verification counted" in html  # why "resolved at" is a window later


def test_the_datasets_page_says_how_many_versions_exist_when_it_lists_only_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 116 with 30 listed said "newest 10 of 30": here 5 versions, 3 listed (the cap made small)."""
    monkeypatch.setattr(datasets_module, "MAX_VERSIONS", 3)
    store = DatasetStore(str(tmp_path / "datasets"))
    for n in range(5):
        table = pa.Table.from_pylist(_dataset_rows(1, n), schema=DATASET_SCHEMA)
        write_deltalake(store.uri("golden"), table, partition_by=DATASET_PARTITION_BY, mode="append")
    root = write(tmp_path / "history", windows=[window("v1", 0)])
    with _client(root, str(tmp_path / "datasets")) as client:
        [golden] = client.get("/api/datasets").json()["tables"]
        html = client.get("/datasets").text
    assert (golden["version"], golden["versions_written"], len(golden["versions"])) == (4, 5, 3)
    assert "Versions (the newest 3 of 5): the table has had 5 versions (0 to 4)" in html
    assert "only the newest 3 are listed" in html


def test_the_demo_policy_carries_its_own_name(tmp_path: Path) -> None:
    """The demo adds a retrain rule to the built-in policy: it is not `default`, so not named so."""
    policy = load_policy(demo_policy(tmp_path / "demo-policy.yaml"))
    assert policy.name == "demo"
    assert "retrain-on-rejected-replies" in [rule.name for rule in policy.rules]
