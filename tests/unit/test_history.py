"""streams.tools.history: a history file read by several processes gives the events, line numbers and
first error of one process."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
import pytest

from streams.tools.generate import generate_history
from streams.tools.history import HistoryError, read_events


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    events = generate_history(60, 20, 3, date(2026, 1, 1))
    out = [orjson.dumps(event) + b"\n" for event in events]
    out[10:10] = [b"\n", b"   \r\n"]  # blank lines count as lines, give no event
    out.insert(40, orjson.dumps({"type": "tick", "timestamp": "2026-01-02T00:00:00Z"}) + b"\n")
    return out


def test_several_processes_read_the_same_events_as_one(lines: list[bytes], tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"".join(lines))
    one = read_events(path)
    assert len(one) == len(lines) - 3 and all(event["type"] != "tick" for event in one)
    for jobs in (2, 3, 7):
        assert read_events(path, jobs=jobs) == one  # src holds the line number: the same lines
    until = one[len(one) // 2]["ts"]
    assert read_events(path, until=until, jobs=3) == read_events(path, until=until)


def test_the_first_bad_line_is_reported_whichever_process_reads_it(lines: list[bytes], tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    bad = [*lines]
    bad[-5] = b'{"type": "purchase"}\n'
    bad[-2] = b"not json\n"
    path.write_bytes(b"".join(bad))
    with pytest.raises(HistoryError) as one:
        read_events(path)
    assert f"h.jsonl:{len(bad) - 4}:" in str(one.value)
    for jobs in (2, 5):
        with pytest.raises(HistoryError) as several:
            read_events(path, jobs=jobs)
        assert str(several.value) == str(one.value)


@pytest.mark.parametrize("content", [b"", b"\n", orjson.dumps({"event_id": "e", "type": "page_view",
                                                                 "timestamp": "2026-01-01T00:00:00Z",
                                                                 "user_id": "u"})])
def test_files_shorter_than_the_processes(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(content)
    assert read_events(path, jobs=8) == read_events(path)


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="cannot read"):
        read_events(tmp_path / "missing.jsonl", jobs=2)


@pytest.mark.parametrize(("line", "reason"), [
    (b'{"event_id": "e", "type": "identify", "timestamp": "2026-03-01T00:00:00Z", "user_id": "u",'
     b' "phone": "+1 555 0100 Alice"}', "invalid_identifier at phone"),
    (b'{"event_id": "e", "type": "identify", "timestamp": "2026-03-01T00:00:00Z", "user_id": "u",'
     b' "consent": {"alice.doe@example.com": "yes"}}', "schema at consent"),
    (b'{"event_id": "e", "type": "page_view", "timestamp": "Alice 2026", "user_id": "u"}',
     "bad_timestamp at timestamp"),
    (b'{"event_id": "e", "type": "alice.doe@example.com", "timestamp": 1, "user_id": "u"}', "unknown_type at type"),
    (b'{"event_id": "e", "type": "purchase", "timestamp": "2026-03-01T00:00:00Z", "user_id": "u",'
     b' "order_id": "o-1", "total": 5, "currency": "Alice"}', "schema at currency"),
])
def test_a_bad_line_is_named_by_place_code_and_field_without_its_values(tmp_path: Path, line: bytes,
                                                                       reason: str) -> None:
    """A command's error line may be logged (``MAILPULSE_LOG_FORMAT=json``): it names the line, the
    dead-letter code and the declared field, and quotes nothing of the input."""
    path = tmp_path / "h.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(HistoryError) as bad:
        read_events(path)
    assert str(bad.value) == f"{path}:1: {reason}"
    assert "Alice" not in str(bad.value) and "alice" not in str(bad.value)


def test_a_file_that_starts_with_a_byte_order_mark_is_read_as_without_it(lines: list[bytes], tmp_path: Path) -> None:
    """A history saved by a Windows editor as "UTF-8 with BOM" (its first line was a bad line)."""
    path, marked = tmp_path / "h.jsonl", tmp_path / "bom.jsonl"
    path.write_bytes(b"".join(lines))
    marked.write_bytes(b"\xef\xbb\xbf" + b"".join(lines))
    assert read_events(marked) == read_events(path)


def test_a_gzip_compressed_file_is_said_to_be_one(lines: list[bytes], tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "h.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    with pytest.raises(HistoryError, match=r"h\.jsonl\.gz:1: not JSON.*; it looks gzip-compressed: decompress it "
                                           r"first$"):
        read_events(path)
