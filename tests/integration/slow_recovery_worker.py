"""A test build of ``mailpulse run`` whose table recovery takes 12 s more (the event loop turning
meanwhile, as while a large changelog is read), and whose /healthz calls a loop stalled after 3 s
without a turn instead of 15, for the test that /healthz stays green while tables recover.
``python -m tests.integration.slow_recovery_worker``."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from faust.tables.recovery import Recovery

import streams.metrics as metrics_module
from streams.cli import main

_on_recovery_completed = Recovery.on_recovery_completed


async def _slow_on_recovery_completed(self: Any, *args: Any, **kwargs: Any) -> None:
    await asyncio.sleep(12)
    await _on_recovery_completed(self, *args, **kwargs)


if __name__ == "__main__":
    Recovery.on_recovery_completed = _slow_on_recovery_completed  # type: ignore[method-assign]
    metrics_module.STALL_AFTER_S = 3.0
    sys.exit(main(["run"]))
