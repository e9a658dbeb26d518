"""Stand-ins shared by the test tiers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class RecordingOutput:
    """Stands in for the output producer: records what agents send, per topic."""

    sent: dict[str, list[tuple[bytes | None, Any, int | None]]] = field(default_factory=dict)
    flushes: int = 0
    log: list[str] = field(default_factory=list)  # topic of each send, "flush" for each flush, in order

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             on_delivered: Any = None) -> None:
        decoded = None if value is None or topic.endswith("-changelog") else orjson.loads(value)
        self.sent.setdefault(topic, []).append((key, decoded, partition))
        self.log.append(topic)

    def send_changelog(self, topic: str, key: bytes, value: bytes | None, partition: int,
                       on_delivered: Any = None) -> None:
        self.send(topic, key, value, partition)

    def flush(self, timeout: float = 30.0) -> int:
        self.flushes += 1
        self.log.append("flush")
        return 0

    async def delivered(self, timeout: float = 30.0) -> None:
        self.log.append("delivered")

    async def flush_soon(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
