"""The batched input delivery: a fetched run of one partition as one message."""

from types import SimpleNamespace

from streams.app import _input_records
from streams.consumer import RecordBatch


def record(offset: int, value: bytes, topic: str = "clicks", partition: int = 3) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=1_000 + offset,
                           timestamp_type=0, key=b"k", value=value, serialized_value_size=len(value))


def test_a_batch_is_addressed_by_its_last_record_and_knows_its_first() -> None:
    run = [record(7, b"a"), record(8, b"bb"), record(10, b"ccc")]  # 9: a gap inside the run
    batch = RecordBatch(run)
    assert (batch.topic, batch.partition, batch.offset, batch.first_offset) == ("clicks", 3, 10, 7)
    assert batch.value is run
    assert batch.timestamp == 1_010
    assert batch.serialized_value_size == 6


def test_input_records_unpack_batches_and_single_messages_alike() -> None:
    batch_event = SimpleNamespace(value=[record(1, b"x"), record(2, b"y")])
    single = SimpleNamespace(value=b"z", message=SimpleNamespace(topic="carts", partition=0, offset=5, key=None,
                                                                  timestamp=2.5))
    assert _input_records([batch_event, single]) == [
        ("clicks", 3, 1, b"k", b"x", 1_001),
        ("clicks", 3, 2, b"k", b"y", 1_002),
        ("carts", 0, 5, None, b"z", 2_500),
    ]
