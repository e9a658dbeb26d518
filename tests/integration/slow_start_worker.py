"""A test build of ``mailpulse run`` whose start takes 20 s more before Faust starts (as a slow
model load or topic check would), for the test that a SIGTERM then leaves the state folder usable.
``python -m tests.integration.slow_start_worker``."""

from __future__ import annotations

import sys
import time
from typing import Any

import streams.worker as worker_module
from streams.cli import main

_create_app = worker_module.create_app


def _slow_create_app(*args: Any, **kwargs: Any) -> Any:
    print("mailpulse: test build: starting slowly", flush=True)
    time.sleep(20)
    return _create_app(*args, **kwargs)


if __name__ == "__main__":
    worker_module.create_app = _slow_create_app  # type: ignore[assignment]
    sys.exit(main(["run"]))
