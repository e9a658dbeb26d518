"""``mailpulse replay`` routes each line by its ``type``; a ``tick`` line goes to every partition of
every input topic (contract section 3: ``tick`` -> any input topic), after the lines before it."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.tools import replay


class Recorder:
    """A producer that records (topic, partition, value) in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None, bytes]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                partition: int | None = None, on_delivery: Any = None) -> None:
        assert value is not None
        self.sent.append((topic, partition, value))
        if on_delivery is not None:
            on_delivery(None, None)  # (delivered)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def _refusing(nth: int) -> Recorder:
    """A producer whose ``nth`` message's delivery report says the broker refused it (too large)."""
    from confluent_kafka import KafkaError

    class Refusing(Recorder):
        def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                    partition: int | None = None, on_delivery: Any = None) -> None:
            super().produce(topic, key, value, partition)
            if on_delivery is not None:
                on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if len(self.sent) == nth else None, None)

    return Refusing()


def test_a_tick_line_goes_to_every_partition_of_every_input_topic_after_the_lines_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    producer = Recorder()
    asked: list[int] = []
    counts = {"clicks": 2, "carts": 1, "purchases": 1, "identities": 3}

    def partition_counts(_: Any) -> dict[str, int]:
        asked.append(1)
        return counts

    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: producer)
    monkeypatch.setattr(replay, "partition_counts", partition_counts)
    view = {"event_id": "v1", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z", "anonymous_id": "a-1",
            "product_id": "p-1"}
    tick = {"type": "tick", "timestamp": "2026-03-01T12:00:00Z"}
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in (view, tick, {**view, "event_id": "v2"}, tick)) + b"\n")
    assert replay.replay_file(path, "unused", show_progress=False) == 4
    ticks = [(topic, partition) for topic, partition, value in producer.sent if orjson.loads(value) == tick]
    everywhere = [(topic, n) for topic, count in counts.items() for n in range(count)]
    assert ticks == everywhere * 2
    assert [orjson.loads(value).get("event_id") for _, _, value in producer.sent] == (
        ["v1"] + [None] * 7 + ["v2"] + [None] * 7)
    assert producer.sent[0][0] == "clicks" and asked == [1]  # the partitions asked once


@pytest.mark.parametrize(("etype", "shown"), [("page_veiw", "type 'page_veiw' is"),
                                              ("alice.doe@example.com", "type is"), (5, "type is")])
def test_a_line_of_an_unknown_type_names_the_type_only_when_it_looks_like_one(etype: Any, shown: str) -> None:
    """A typo is shown; free text (which may be personal data) is not repeated in the error line."""
    from streams.tools.produce import RoutingError, topic_for

    with pytest.raises(RoutingError) as bad:
        topic_for({"type": etype})
    assert str(bad.value).startswith(shown) and "alice" not in str(bad.value)


def test_ctrl_c_flushes_what_was_sent_and_says_how_much(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ctrl-C during a replay ended with exit 130 and no word of what had gone out (found in review)."""
    producer = Recorder()
    flushed: list[float] = []
    monkeypatch.setattr(producer, "flush", lambda timeout=0: flushed.append(timeout) or 0, raising=False)
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: producer)
    line = orjson.dumps({"event_id": "v", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z",
                         "anonymous_id": "a-1", "product_id": "p-1"})
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([line] * 5) + b"\n")
    real_produce = replay.produce

    def produce(*args: Any, **kwargs: Any) -> None:
        if len(producer.sent) == 3:
            raise KeyboardInterrupt
        real_produce(*args, **kwargs)

    monkeypatch.setattr(replay, "produce", produce)
    with pytest.raises(replay.ReplayStopped) as stopped:
        replay.replay_file(path, "unused", show_progress=False)
    assert stopped.value.sent == 3 and flushed


def test_ctrl_c_says_what_the_brief_flush_left_unacknowledged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C flushed for 5 s and said "N events were sent" whatever the flush left queued (dropped at
    exit) or the broker had refused: events were lost and the line counted them as sent."""
    from confluent_kafka import KafkaError

    from streams import cli

    class Slow(Recorder):
        def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                    partition: int | None = None, on_delivery: Any = None) -> None:
            if len(self.sent) == 4:
                raise KeyboardInterrupt
            super().produce(topic, key, value, partition)
            if on_delivery is not None and len(self.sent) == 1:
                on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)

        def flush(self, timeout: float = 0) -> int:
            return 2  # two still queued when the flush gave up

    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: Slow())
    monkeypatch.setattr(cli, "_check_broker", lambda bootstrap: None)
    line = orjson.dumps({"event_id": "v", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z",
                         "anonymous_id": "a-1", "product_id": "p-1"})
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([line] * 6) + b"\n")
    assert cli.main(["replay", str(path), "--broker", "kafka://127.0.0.1:9092"]) == 130
    said = capsys.readouterr().err
    assert "4 events" in said and "3 of their messages were not acknowledged" in said, said


def test_events_the_broker_did_not_take_are_said_instead_of_replayed(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """librdkafka reports a message it could not deliver after produce returned; replay did not listen,
    and said "replayed N" with exit 0 whatever was lost (found in review)."""
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: _refusing(2))
    line = orjson.dumps({"event_id": "v", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z",
                         "anonymous_id": "a-1", "product_id": "p-1"})
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([line] * 3) + b"\n")
    with pytest.raises(replay.ReplayError, match="1 of 3 events were not delivered"):
        replay.replay_file(path, "unused", show_progress=False)


@pytest.mark.parametrize("until", [None, "2026-03-01T12:00:00Z"], ids=["a tick line", "--until"])
def test_ticks_the_broker_did_not_take_are_said(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                until: str | None) -> None:
    """A tick (a tick line's or ``--until``'s, one message per input partition) was produced without a
    delivery report and ``--until``'s flush was not checked: a tick the broker refused left the
    watermark short of its time while replay said "then a tick at T on every input partition", exit 0."""
    from confluent_kafka import KafkaError

    class RefusingTicks(Recorder):
        def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                    partition: int | None = None, on_delivery: Any = None) -> None:
            super().produce(topic, key, value, partition)
            assert value is not None
            refused = orjson.loads(value)["type"] == "tick" and topic == "carts"
            if on_delivery is not None:
                on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT) if refused else None, None)

    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: RefusingTicks())
    monkeypatch.setattr(replay, "partition_counts", lambda _: {"clicks": 2, "carts": 1, "purchases": 1,
                                                                 "identities": 1})
    monkeypatch.setattr("streams.tools.produce.partition_counts", lambda _: {"clicks": 2, "carts": 1,
                                                                              "purchases": 1, "identities": 1})
    view = {"event_id": "v1", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z", "anonymous_id": "a-1",
            "product_id": "p-1"}
    lines = [view] if until else [view, {"type": "tick", "timestamp": "2026-03-01T11:00:00Z"}]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    with pytest.raises(replay.ReplayError, match=r"1 tick messages .* were not delivered"):
        replay.replay_file(path, "unused", until=until, show_progress=False)


def test_a_file_that_cannot_be_read_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A file without read permission (chmod 000, another user's) passed the argument check (it is a
    file) and replay ended with a PermissionError's traceback."""
    from streams import cli

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"{}\n")
    real_open = Path.open

    def refusing_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: Recorder())
    monkeypatch.setattr(cli, "_check_broker", lambda bootstrap: None)
    assert cli.main(["replay", str(path), "--broker", "kafka://127.0.0.1:9092"]) == cli.EXIT_USAGE
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "cannot read" in said and "Permission denied" in said, said


@pytest.mark.parametrize("bad", [b"garbage", b"[1]"])
def test_a_bad_line_says_what_the_broker_did_not_take_before_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                bad: bytes) -> None:
    """At a bad line replay flushed and said "N events were sent before it" without looking at the
    deliveries: events the broker refused were counted as sent."""
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: _refusing(1))
    line = orjson.dumps({"event_id": "v", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z",
                         "anonymous_id": "a-1", "product_id": "p-1"})
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([line, line, bad, line]) + b"\n")
    with pytest.raises(replay.ReplayError, match=r":3: .*\(2 events were sent before it; 1 of their messages "
                                                 r"were not acknowledged by the broker\)"):
        replay.replay_file(path, "unused", show_progress=False)


@pytest.mark.parametrize("until", [None, "2026-03-01T12:00:00Z"], ids=["a tick line", "--until"])
def test_a_tick_to_a_topic_the_broker_lacks_says_what_was_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               until: str | None) -> None:
    """A tick (a tick line's or ``--until``'s) on a broker without every input topic stopped replay with
    only "topic 'carts' does not exist": no line number, no word of the events sent before it, and
    (at a tick line) no flush of them."""
    from streams.tools.produce import RoutingError

    producer = Recorder()
    flushed: list[float] = []
    monkeypatch.setattr(producer, "flush", lambda timeout=0: flushed.append(timeout) or 0, raising=False)
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: producer)

    def missing(_: Any) -> dict[str, int]:
        raise RoutingError("topic 'carts' does not exist on the broker (start `mailpulse run` first)")

    monkeypatch.setattr(replay, "partition_counts", missing)
    monkeypatch.setattr("streams.tools.produce.partition_counts", missing)
    view = orjson.dumps({"event_id": "v1", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z",
                         "anonymous_id": "a-1", "product_id": "p-1"})
    tick = orjson.dumps({"type": "tick", "timestamp": "2026-03-01T11:00:00Z"})
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([view, view] if until else [view, view, tick, view]) + b"\n")
    expected = (r"its 2 events were sent, but not --until's tick: topic 'carts'" if until else
                r":3: a tick line: topic 'carts' does not exist .*\(2 events were sent before it\)")
    with pytest.raises(replay.ReplayError, match=expected):
        replay.replay_file(path, "unused", until=until, show_progress=False)
    assert flushed


def test_a_file_that_starts_with_a_byte_order_mark_is_replayed_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file saved by a Windows tool as "UTF-8 with BOM": its first line is sent as the event it holds
    (replay stopped there: not JSON), without the mark."""
    producer = Recorder()
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: producer)
    view = orjson.dumps({"event_id": "v1", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z",
                         "anonymous_id": "a-1"})
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + view + b"\r\n" + view + b"\r\n")
    assert replay.replay_file(path, "unused", show_progress=False) == 2
    assert [value for _, _, value in producer.sent] == [view, view]


LINE = orjson.dumps({"event_id": "v1", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z",
                     "anonymous_id": "a-1"}) + b"\n"


@pytest.mark.parametrize(("content", "hint"), [
    (gzip.compress(LINE * 3), "looks gzip-compressed: decompress it first"),
    (bz2.compress(LINE * 3), "looks bzip2-compressed: decompress it first"),
    ((LINE * 3).decode().encode("utf-16"), "looks UTF-16-encoded: save it as UTF-8"),
    ((LINE * 3).decode().encode("utf-16-le"), "looks UTF-16-encoded: save it as UTF-8")])
def test_a_compressed_or_utf_16_file_is_said_to_be_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       content: bytes, hint: str) -> None:
    """Its first line was "not valid UTF-8: surrogates not allowed" and nothing more."""
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: Recorder())
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    with pytest.raises(replay.ReplayError, match=rf":1: .*; it {hint} \(0 events were sent before it\)$"):
        replay.replay_file(path, "unused", show_progress=False)
    path.write_bytes(LINE + b"garbage\n")
    with pytest.raises(replay.ReplayError, match=r":2: [^;]*\(1 events were sent before it\)$"):
        replay.replay_file(path, "unused", show_progress=False)


def test_a_line_with_an_unpaired_surrogate_escape_is_replayed_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker reads it (U+FFFD in its place): replay stopped at it, not JSON."""
    producer = Recorder()
    monkeypatch.setattr(replay, "make_producer", lambda bootstrap: producer)
    line = (b'{"event_id": "s1", "type": "search", "timestamp": "2026-03-01T10:00:00Z", "anonymous_id": "a-1", '
            b'"query": "caf\\ud83d"}')
    path = tmp_path / "events.jsonl"
    path.write_bytes(line + b"\n")
    assert replay.replay_file(path, "unused", show_progress=False) == 1
    assert producer.sent == [("clicks", None, line)]


@pytest.mark.parametrize(("flag", "at"), [
    (["--until", "2026-03-01T13:00:00+01:00"], "2026-03-01T12:00:00.000Z"),
    (["--until=2026-03-01"], "2026-03-01T00:00:00.000Z"),
    (["--unt", "1772323200000"], "2026-03-01T00:00:00.000Z"),
], ids=["offset", "equals", "abbreviated"])
def test_the_last_line_names_the_tick_time_in_utc_however_until_was_given(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str],
        at: str) -> None:
    """``--until=T`` and an abbreviated ``--unt T`` are argparse's too: the last line echoed the text
    after a literal ``--until`` and fell back to epoch milliseconds for them."""
    from streams import cli

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"{}\n")
    monkeypatch.setattr(cli, "_check_broker", lambda bootstrap: None)
    monkeypatch.setattr(replay, "replay_file", lambda *args, **kwargs: 1)
    assert cli.main(["replay", str(path), "--broker", "kafka://127.0.0.1:1", *flag]) == 0
    assert capsys.readouterr().err.endswith(f"then a tick at {at} on every input partition\n")
