"""Routing accepted events to the profile hop: which partition, and how they are batched."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import orjson

#: Soft size limit of one internal batch record (brokers refuse records over 1 MB by default).
RECORD_BYTES = 256 * 1024


def partition_for(key: str, partitions: int) -> int:
    """The internal-topic (and so profile-table) partition of a profile key: stable across
    processes and versions, so a key's state always lives in one partition."""
    return zlib.crc32(key.encode()) % partitions


class PartitionBatches:
    """``[profile key, event]`` pairs per partition, cut into records of about ``limit`` bytes at most
    (each record an orjson list, in the order the pairs were added)."""

    def __init__(self, limit: int = RECORD_BYTES) -> None:
        self.limit = limit
        self._entries: dict[int, list[tuple[str | None, dict[str, Any]]]] = {}
        self._sizes: dict[int, int] = {}

    def add(self, partition: int, key: str | None, event: dict[str, Any], size: int) -> bytes | None:
        """Adds a pair of about ``size`` bytes; returns a full record of the partition to send first."""
        entries = self._entries.setdefault(partition, [])
        full = None
        if entries and self._sizes[partition] + size > self.limit:
            full = orjson.dumps(entries)
            entries.clear()
            self._sizes[partition] = 0
        entries.append((key, event))
        self._sizes[partition] = self._sizes.get(partition, 0) + size
        return full

    def records(self) -> Iterator[tuple[int, bytes]]:
        """The remaining records, one per partition that has pairs."""
        for partition, entries in self._entries.items():
            if entries:
                yield partition, orjson.dumps(entries)
