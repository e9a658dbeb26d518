"""Work split over forked processes, for the offline commands (``train``, ``score``) on a machine with
more than one core.

Each task but the first runs in a child forked from this process: it reads this process's data
(a history already in memory) without copying or serializing it, and only its result travels back,
pickled, through a pipe.  The first task runs here meanwhile.  Results come back in task order, so a
caller that merges them in a fixed order gets the same output for any number of processes.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class ChildFailed(RuntimeError):
    """A child process ended without a result (killed, out of memory) or with an unpicklable error."""


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_jobs(most: int = 8) -> int:
    """Processes for an offline command: one per core, at most ``most``."""
    return max(1, min(most, cores()))


def _child(task: Callable[[], Any], write_fd: int) -> None:
    """Runs in the child: the task's result (or its exception) pickled into the pipe, then ``_exit``
    (no atexit handlers, no flush of the parent's inherited buffers)."""
    code = 0
    try:
        try:
            payload = pickle.dumps((True, task()), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # every failure goes back to the parent
            code = 1
            try:
                payload = pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # an unpicklable exception: its text
                payload = pickle.dumps((False, ChildFailed(f"{type(exc).__name__}: {exc}")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    finally:
        os._exit(code)


def run_forked(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task's result, in order: the first task runs in this process, each other one in a forked
    child at the same time.  The first exception (in task order) is raised here once all have ended."""
    if len(tasks) <= 1 or not hasattr(os, "fork"):
        return [task() for task in tasks]
    children: list[tuple[int, int]] = []  # (pid, read end of its pipe)
    try:
        for task in tasks[1:]:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child (coverage cannot see it)
                os.close(read_fd)
                _child(task, write_fd)
            os.close(write_fd)
            children.append((pid, read_fd))
        outcomes: list[tuple[bool, Any]] = []
        try:
            outcomes.append((True, tasks[0]()))
        except Exception as exc:  # raised below, after the children are reaped
            outcomes.append((False, exc))
        for pid, read_fd in children:
            with os.fdopen(read_fd, "rb") as pipe:
                payload = pipe.read()
            _, status = os.waitpid(pid, 0)
            if not payload:
                code = os.waitstatus_to_exitcode(status)
                killed = " (killed: out of memory? fewer --jobs hold less at once)" if code < 0 else ""
                outcomes.append((False, ChildFailed(f"a worker process ended without a result "
                                                    f"(status {code}){killed}")))
            else:
                outcomes.append(pickle.loads(payload))
        children = []
    finally:
        for pid, read_fd in children:  # only when this process itself was interrupted
            try:
                os.close(read_fd)
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
    for ok, value in outcomes:
        if not ok:
            raise value
    return [value for _, value in outcomes]
