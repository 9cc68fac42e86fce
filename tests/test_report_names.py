"""Evidently report file names stay inside the reports folder whatever the segment labels hold."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from schemas.events import Segment
from streams.detect_stage import report_file_name

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_route_is_no_folder_and_dots_do_not_climb() -> None:
    names = {
        report_file_name(Segment(model="m", model_version="v1", route=route).key(), START)
        for route in ("/chat", "_chat", "../../etc/passwd", "..", "chat")
    }
    assert len(names) == 5  # the readable parts collide; the hash keeps them apart
    assert all("/" not in name and ".." not in name for name in names)
    assert report_file_name("m|v1||/chat|", START).startswith("m_v1_chat-")


@given(segment=st.text(max_size=2000), start=st.datetimes())
def test_any_segment_gives_one_bounded_file_in_the_folder(segment: str, start: datetime) -> None:
    name = report_file_name(segment, start)
    folder = Path("/reports")
    assert (folder / name).parent == folder and Path(name).name == name
    assert "/" not in name and "\\" not in name and ".." not in name and "\0" not in name
    assert len(name.encode()) <= 120 and name.endswith(".html")


@given(a=st.text(max_size=200), b=st.text(max_size=200))
def test_different_segments_get_different_names(a: str, b: str) -> None:
    assert (report_file_name(a, START) == report_file_name(b, START)) == (a == b)
