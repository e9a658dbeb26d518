"""A test build of ``mailpulse run`` whose ingest agent crashes on a record that contains
``crash-the-ingest-agent`` (an exception outside the per-input guard, as a bug would raise), for the
test that such a failure ends the worker and the next start reads the batch again.
``python -m tests.integration.crashing_worker``."""

from __future__ import annotations

import sys
from typing import Any

import streams.app as app_module
from streams.cli import main

_route_batch = app_module.route_batch


def _crashing_route_batch(inputs: Any, *args: Any, **kwargs: Any) -> Any:
    inputs = list(inputs)
    if any(b"crash-the-ingest-agent" in (record[4] or b"") for record in inputs):
        raise RuntimeError("test build: the ingest agent crashes")
    return _route_batch(inputs, *args, **kwargs)


if __name__ == "__main__":
    app_module.route_batch = _crashing_route_batch  # type: ignore[assignment]
    sys.exit(main(["run"]))
