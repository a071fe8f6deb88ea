"""workers.toolkit.proc.run: how a tool that runs too long ends, as the engine must see it."""

from __future__ import annotations

import time

import pytest

from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.base import StepCancelled, StepFailed, StepTimedOut
from workers.toolkit import proc


def test_a_tool_that_overruns_its_own_timeout_fails_the_step_and_is_named(tmp_path):
    started = time.monotonic()
    with pytest.raises(StepFailed, match=r"^sleep timed out after 0\.\d+s and was killed"):
        proc.run(["sleep", "30"], make_ctx(tmp_path), timeout=0.3)
    assert time.monotonic() - started < 5


def test_a_tool_still_running_at_the_steps_deadline_is_interrupted_as_timed_out(tmp_path):
    # StepTimedOut, not just any StepInterrupted: stepexec records the step as timed_out on that type alone.
    with pytest.raises(StepTimedOut):
        proc.run(["sleep", "30"], make_ctx(tmp_path, timeout=0.3), timeout=20)


def test_a_cancelled_step_interrupts_its_tool(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.cancelled.set()
    with pytest.raises(StepCancelled):
        proc.run(["sleep", "30"], ctx)
