"""streams.tools.forked: tasks in forked children, results and errors back in task order."""

from __future__ import annotations

import os

import pytest

from streams.tools.forked import ChildFailed, run_forked


def test_each_task_but_the_first_runs_in_a_child_and_results_come_back_in_order() -> None:
    data = list(range(100_000))  # in memory before the fork: the children read it without a copy
    results = run_forked([lambda k=k: (os.getpid(), sum(data[k::3])) for k in range(3)])  # type: ignore[misc]
    assert [total for _, total in results] == [sum(data[k::3]) for k in range(3)]
    pids = [pid for pid, _ in results]
    assert pids[0] == os.getpid() and len(set(pids)) == 3


def test_the_first_error_in_task_order_is_raised_here() -> None:
    def fails(message: str) -> int:
        raise ValueError(message)

    with pytest.raises(ValueError, match="second"):
        run_forked([lambda: 1, lambda: fails("second"), lambda: fails("third")])
    with pytest.raises(ValueError, match="first"):
        run_forked([lambda: fails("first"), lambda: fails("second")])


def test_a_child_that_dies_without_a_result_is_an_error() -> None:
    with pytest.raises(ChildFailed, match="without a result"):
        run_forked([lambda: 1, lambda: os._exit(3)])


def test_one_task_runs_here() -> None:
    assert run_forked([os.getpid]) == [os.getpid()]
