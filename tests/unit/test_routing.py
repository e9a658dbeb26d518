"""streams.routing: partitions of profile keys and batch records of the internal topic."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.ingest import IngestPolicy
from streams.routing import RECORD_BYTES, DelayedClocks, PartitionBatches, clock_records, partition_for, route_batch


def test_partition_of_a_key_is_stable_and_in_range() -> None:
    assert partition_for("u:u-1", 8) == partition_for("u:u-1", 8)
    assert {partition_for(f"u:u-{i}", 8) for i in range(200)} == set(range(8))


def test_records_keep_order_per_partition_and_stay_under_the_limit() -> None:
    batches = PartitionBatches(limit=1000)
    early: list[tuple[int, bytes]] = []
    for i in range(25):
        full = batches.add(i % 2, f"k-{i}", {"n": i}, 150)
        if full is not None:
            early.append((i % 2, full))
    records = early + list(batches.records())
    for partition in (0, 1):
        pairs = [pair for p, record in records if p == partition for pair in orjson.loads(record)]
        assert [n["n"] for _, n in pairs] == list(range(partition, 25, 2))
    assert all(len(orjson.loads(record)) <= 6 for _, record in records)  # 6 x 150 <= 1000 < 7 x 150
    assert len(early) == 3  # partition 0: 13 pairs = 6 + 6 (cut early) + 1; partition 1: 12 = 6 (cut early) + 6


def test_route_batch_sends_events_then_clocks_per_partition_and_rejects_to_dead_letter() -> None:
    good = orjson.dumps({"event_id": "e-1", "type": "page_view", "timestamp": 1772359200000, "user_id": "u-1"})
    tick = orjson.dumps({"type": "tick", "timestamp": 1772359260000})
    sent: list[tuple[int, list[Any]]] = []
    dead: list[tuple[str, str, bytes | None]] = []
    route_batch([("clicks", 0, 5, None, good, None), ("clicks", 1, 6, b"k", b"{broken", None),
                 ("carts", 0, 7, None, tick, None)], 4, 1772359300000, IngestPolicy(),
                lambda partition, record: sent.append((partition, orjson.loads(record))),
                lambda topic, code, key, letter: dead.append((topic, code, key)))
    assert dead == [("clicks", "not_json", b"k")]
    assert sorted(partition for partition, _ in sent) == [0, 1, 2, 3]  # every partition hears the clocks
    [(partition, pairs)] = [(partition, pairs) for partition, pairs in sent if pairs[0][0] is not None]
    assert partition == partition_for("u:u-1", 4)
    (key, event), (none, update) = pairs  # the event first, then the clocks the batch moved
    assert key == "u:u-1" and event["event_id"] == "e-1" and event["src"][:3] == ["clicks", 0, 5]
    assert none is None and sorted(update["clocks"]) == [["carts", 0, 1772359260000], ["clicks", 0, 1772359200000]]


@pytest.mark.parametrize(("timestamp_ms", "arrived_ms"), [
    (None, 1772359300000), (-1, 1772359300000), (0, 1772359300000), (2**63 - 1, 1772359300000),
    (1772359299000, 1772359299000),
])
def test_an_input_record_s_time_is_its_arrival_only_when_it_is_in_the_past(timestamp_ms: int | None,
                                                                           arrived_ms: int) -> None:
    """A record's time is its producer's to set: one years ahead made the profile hop's latency of every
    event released with it 0 (``max(arrival)``), and -1 (no time) 56 years."""
    good = orjson.dumps({"event_id": "e-1", "type": "page_view", "timestamp": 1772359200000, "user_id": "u-1"})
    sent: list[list[Any]] = []
    route_batch([("clicks", 0, 5, None, good, timestamp_ms)], 1, 1772359300000, IngestPolicy(),
                lambda partition, record: sent.extend(orjson.loads(record)), lambda *letter: None)
    [event] = [event for key, event in sent if key is not None]
    assert event["src"] == ["clicks", 0, 5, arrived_ms]


def test_delayed_clocks_go_out_with_the_first_batch_after_their_delay_merged_and_every_one_at_a_cut() -> None:
    delayed = DelayedClocks(delay_ms=100)
    view = orjson.dumps({"event_id": "e-1", "type": "page_view", "timestamp": 1772359200000, "user_id": "u-1"})
    later = orjson.dumps({"event_id": "e-2", "type": "page_view", "timestamp": 1772359200500, "user_id": "u-1"})
    records: list[tuple[int, list[Any]]] = []

    def batch(raw: bytes, now: int) -> list[list[Any]]:
        sent: list[tuple[int, list[Any]]] = []
        route_batch([("clicks", 0, 1, None, raw, None)], 2, 1772359300000, IngestPolicy(),
                    lambda partition, record: sent.append((partition, orjson.loads(record))), lambda *_: None,
                    delayed, now)  # the delays run on their own (monotonic) clock
        records.extend(sent)
        return [entry for _, pairs in sent for entry in pairs if entry[0] is None and "clocks" in entry[1]]

    assert batch(view, 800) == [] and len(delayed) == 1  # its own clock waits
    [(partition, [event, marker])] = records  # the batch's record to the one partition its event went to
    assert event[1]["event_id"] == "e-1" and marker == [None, {"batch": [delayed.token, 1]}]
    delayed.applied(partition, [event, marker])  # the profile agent there applied it
    assert delayed.due(900) == {("clicks", 0): 1772359200000}
    records.clear()
    assert batch(view, 1_000) == [] and len(delayed) == 1
    [(_, [event, marker])] = records
    assert batch(later, 1_099) == [] and len(delayed) == 2
    assert batch(view, 1_100) == []  # e-1's batch is 100 ms old, but its record is not applied yet
    delayed.applied(partition, [event, [None, {"batch": ["another worker", 2]}]])  # not ours: no effect
    delayed.applied(1 - partition, [[None, {"batch": [delayed.token, 2]}]])  # a partition it did not go to
    assert delayed.due(1_150) == {}
    delayed.applied(partition, [event, marker])  # the profile agent applied it: its forwards are sent
    clocks = batch(view, 1_150)  # e-1's clock goes, on every partition
    assert clocks == [[None, {"clocks": [["clicks", 0, 1772359200000]]}]] * 2 and len(delayed) == 3
    assert delayed.due(1_300) == {}  # e-2's (marker 3) is not applied either...
    assert delayed.due(1_099 + delayed.hold_ms) == {("clicks", 0): 1772359200500}  # ...but has waited long enough
    assert delayed.waiting(4) and not delayed.waiting(3) and delayed.newest() == 5  # batches by number
    assert delayed.due(0, upto=4) == {("clicks", 0): 1772359200000} and len(delayed) == 1  # a commit's cut
    assert delayed.due(0, every=True) == {("clicks", 0): 1772359200000} and len(delayed) == 0  # a blocking one
    assert clock_records({("clicks", 0): 5}, 2) == [(0, b'[[null,{"clocks":[["clicks",0,5]]}]]'),
                                                    (1, b'[[null,{"clocks":[["clicks",0,5]]}]]')]


def test_delayed_clocks_of_partitions_no_agent_here_reported_wait_the_delay_alone() -> None:
    """Another worker's partitions: this worker cannot see their profile hop."""
    delayed = DelayedClocks(delay_ms=100)
    delayed.add({("clicks", 0): 7}, 1_000, 1, [3])
    assert delayed.due(1_099) == {} and delayed.due(1_100) == {("clicks", 0): 7}
    delayed.applied(3, [[None, {"batch": [delayed.token, 1]}]])  # once reported, it is waited for
    delayed.add({("clicks", 0): 8}, 2_000, 2, [3])
    assert delayed.due(2_100) == {}
    delayed.applied(3, [[None, {"batch": [delayed.token, 5]}]])  # a later batch applied: this one too
    assert delayed.due(2_100) == {("clicks", 0): 8}
    delayed.add({("clicks", 0): 10}, 2_500, 7, [3])
    delayed.applied(3, [[None, {"batch": [delayed.token, 7]}]])
    assert delayed.due(2_500) == {("clicks", 0): 10}  # applied on a partition held here: no delay needed
    delayed.add({("clicks", 0): 11}, 2_600, 8, [3, 4])
    delayed.applied(3, [[None, {"batch": [delayed.token, 8]}]])
    assert delayed.due(2_699) == {} and delayed.due(2_700) == {("clicks", 0): 11}  # 4 is another worker's
    delayed.add({("clicks", 0): 9}, 3_000, 9, [3])
    assert delayed.due(3_100) == {}
    delayed.forget([3])  # the partition was revoked: its marker may never be applied here
    assert delayed.due(3_100) == {("clicks", 0): 9}
    assert DelayedClocks(delay_ms=5).hold_ms == 2_000  # a small delay does not cut the wait for the hop short


def test_no_delay_sends_a_batchs_clocks_with_it() -> None:
    sent: list[tuple[int, list[Any]]] = []
    view = orjson.dumps({"event_id": "e-1", "type": "page_view", "timestamp": 1772359200000, "user_id": "u-1"})
    route_batch([("clicks", 0, 1, None, view, None)], 2, 1_000, IngestPolicy(),
                lambda partition, record: sent.append((partition, orjson.loads(record))), lambda *_: None,
                DelayedClocks(delay_ms=0))
    assert sorted(partition for partition, pairs in sent if pairs[-1][0] is None) == [0, 1]


# (escaped as JSON, control characters and quotes grow; an id of control characters alone names nobody)
@pytest.mark.parametrize("user", ["u-1", "u" + "\x01" * 511, "\U0001F600" * 512, '"' * 512])
def test_internal_records_stay_under_the_record_size_when_events_grow_as_they_are_normalized(user: str) -> None:
    """A purchase of 1,000 items of ``{"product_id": "a"}`` is ~19 KB as sent and ~31 KB normalized
    (each item gains its quantity): a record sized by the input's bytes was 1.6 times the limit, and
    a run of four such records forwarded at once made a record the producer refuses."""
    items = [{"product_id": "a"}] * 1000
    inputs = [("purchases", n % 4, n, None, orjson.dumps({
        "event_id": f"e-{n}", "type": "purchase", "timestamp": 1772359200000 + n, "user_id": user,
        "order_id": f"o-{n}", "total": 10.0, "items": items}), None) for n in range(48)]
    sent: list[bytes] = []
    route_batch(inputs, 4, 1772359300000, IngestPolicy(), lambda partition, record: sent.append(record),
                lambda *letter: None)
    events = [record for record in sent if orjson.loads(record)[0][0] is not None]
    assert len(events) > 1 and max(map(len, events)) <= RECORD_BYTES
