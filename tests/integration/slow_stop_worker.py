"""A test build of ``mailpulse run`` whose stop takes 5 s more after Faust stopped, before the
clean-stop marker is written (as closing the producer or the product-recs reader can), for the test
that a second stop signal then does not cut the stop short.  ``python -m tests.integration.slow_stop_worker``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import streams.worker as worker_module
from streams.cli import main

_mark_clean_stop = worker_module.mark_clean_stop


def _slow_mark_clean_stop(marker: Path) -> str | None:
    print("mailpulse: test build: stopping slowly", flush=True)
    time.sleep(5)
    return _mark_clean_stop(marker)


if __name__ == "__main__":
    worker_module.mark_clean_stop = _slow_mark_clean_stop  # type: ignore[assignment]
    sys.exit(main(["run"]))
