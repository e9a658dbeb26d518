"""A test build of ``mailpulse run`` whose consumer leaves the input partition of a record that
contains ``stop-reading-this-partition`` paused (nothing of it is taken in from then on, as with a
fetch that stopped), and whose check that every partition is read waits 3 s instead of 300, for the test
that /healthz and the lag show such a partition.  ``python -m tests.integration.stalled_worker``."""

from __future__ import annotations

import sys
from typing import Any

from faust.types import TP

import streams.app as app_module
import streams.metrics as metrics_module
import streams.worker as worker_module
from streams.cli import main

_route_batch = app_module.route_batch
_create_app = worker_module.create_app
_apps: list[Any] = []


def _capturing_create_app(*args: Any, **kwargs: Any) -> Any:
    pipeline = _create_app(*args, **kwargs)
    _apps.append(pipeline.app)
    return pipeline


def _pausing_route_batch(inputs: Any, *args: Any, **kwargs: Any) -> Any:
    inputs = list(inputs)
    for topic, partition, _offset, _key, value, _ts in inputs:
        if b"stop-reading-this-partition" in (value or b""):
            _apps[-1].consumer.pause_partitions({TP(topic, partition)})
    return _route_batch(inputs, *args, **kwargs)


if __name__ == "__main__":
    worker_module.create_app = _capturing_create_app  # type: ignore[assignment]
    app_module.route_batch = _pausing_route_batch  # type: ignore[assignment]
    app_module.ENDS_EVERY_S = 1.0
    metrics_module.PARTITION_STALL_AFTER_S = 3.0
    sys.exit(main(["run"]))
