"""``mailpulse tail``: print a topic as JSON lines, reading every partition without a consumer group."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from typing import TextIO

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from streams.broker import FIRST_OFFSET
from streams.ingest import UTF8_BOM, parse_json, unpaired_surrogates_replaced


class TailError(RuntimeError):
    pass


#: 19 digits or more: a number that may be past 64 bits, which orjson reads as a float (rounded)
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def render(value: bytes | None) -> bytes:
    """One output line: the JSON value as compact JSON, ``null`` for a tombstone, else a JSON string."""
    if value is None:
        return b"null"
    if _LONG_DIGITS.search(value) is None:
        try:
            return orjson.dumps(parse_json(value))  # (as the worker reads it: a byte-order mark, a lone surrogate)
        except orjson.JSONDecodeError:
            return orjson.dumps(value.decode("utf-8", errors="replace"))
    try:  # the standard library keeps every integer whole
        text = value.removeprefix(UTF8_BOM)
        # (the standard library reads a lone surrogate as one, which cannot be printed: as U+FFFD, as the worker)
        read = json.loads(unpaired_surrogates_replaced(text) if b"\\u" in text else text, parse_constant=_refuse)
        return json.dumps(read, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):  # (not JSON, or a number past a float: 1e400)
        return orjson.dumps(value.decode("utf-8", errors="replace"))




def tail(topic: str, bootstrap: str, from_beginning: bool = False, count: int | None = None,
         timeout: float | None = None, out: TextIO = sys.stdout, notices: TextIO = sys.stderr) -> int:
    """Print messages of ``topic``; returns how many were printed.  A broker that stops answering is
    said once on ``notices`` (tail goes on waiting for it, as it waits for new messages), and again
    when messages come after it."""
    unreachable = threading.Event()  # librdkafka said so since the last message (from its own thread)

    def error_cb(error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:  # (librdkafka goes on trying on its own)
            unreachable.set()

    consumer = Consumer({
        "error_cb": error_cb,
        "bootstrap.servers": bootstrap,
        "group.id": f"mailpulse-tail-{uuid.uuid4().hex}",  # required by the client; never joined
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",  # --from-beginning on a log whose start has moved past 0
        "log_level": 0,
    })
    try:
        meta = consumer.list_topics(topic, timeout=10)
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise TailError(f"topic {topic!r} does not exist")
        start = FIRST_OFFSET if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in info.partitions])
        printed = 0
        last = time.monotonic()
        buffer = out.buffer if hasattr(out, "buffer") else None
        told = False  # the broker's absence was said
        while count is None or printed < count:
            batch = consumer.consume(num_messages=min(500, (count - printed) if count else 500), timeout=0.2)
            if not batch:
                if unreachable.is_set() and not told:
                    until = "" if timeout is None else f"--timeout {timeout:g} s, "
                    print(f"mailpulse: tail: the broker at {bootstrap} does not answer; still waiting "
                          f"({until}Ctrl-C stops)", file=notices, flush=True)
                    told = True
                if timeout is not None and time.monotonic() - last >= timeout:
                    break
                continue
            if told:
                print(f"mailpulse: tail: the broker at {bootstrap} answers again", file=notices, flush=True)
                told = False
            unreachable.clear()
            last = time.monotonic()
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise TailError(str(err))
                line = render(msg.value()) + b"\n"
                if buffer is not None:
                    buffer.write(line)
                else:
                    out.write(line.decode())
                printed += 1
                if count is not None and printed >= count:
                    break
            out.flush()
        return printed
    finally:
        consumer.close()
