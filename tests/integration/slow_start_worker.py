"""A test build of ``mailpulse run`` whose start takes 20 s more before Faust starts (as a slow
model load or topic check would), for the test that a SIGTERM then leaves the state folder usable.
With the argument ``faust``, the 20 s are spent in Faust's own start, before it takes the stop
signals over (its worker set up, its logging configured).
``python -m tests.integration.slow_start_worker [faust]``."""

from __future__ import annotations

import sys
import time
from typing import Any

import streams.worker as worker_module
from streams.cli import main

_create_app = worker_module.create_app
_on_execute = worker_module.QuietWorker.on_execute


def _slow_create_app(*args: Any, **kwargs: Any) -> Any:
    print("mailpulse: test build: starting slowly", flush=True)
    time.sleep(20)
    return _create_app(*args, **kwargs)


async def _slow_on_execute(self: Any) -> None:
    print("mailpulse: test build: starting slowly", flush=True)
    time.sleep(20)
    await _on_execute(self)


if __name__ == "__main__":
    if sys.argv[1:] == ["faust"]:
        worker_module.QuietWorker.on_execute = _slow_on_execute  # type: ignore[method-assign]
    else:
        worker_module.create_app = _slow_create_app  # type: ignore[assignment]
    sys.exit(main(["run"]))
