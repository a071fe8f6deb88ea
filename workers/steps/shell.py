"""shell: run a program (argv, never through a shell), through workers/toolkit/proc.run.

Behaviour (docs/architecture.md, "The shell step"): stdout and stderr lines go out live, stderr's prefixed
"stderr: "; each stream keeps proc.STREAM_LIMIT bytes; the input `timeout:` is the step's own deadline, so
overrunning it ends the step timed_out (like the step-level `timeout:`), not failed; a non-zero exit not in
allow_exit_codes fails the step with its outputs kept.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from server.runbooks.kinds import ShellInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import proc


@register("shell")
class Shell(Step[ShellInputs]):
    def run(self, inputs: ShellInputs, ctx: StepContext) -> dict[str, Any]:
        argv = inputs.argv if inputs.argv is not None else shlex.split(inputs.command or "")
        deadline = ctx.deadline
        if inputs.timeout is not None:
            own = time.monotonic() + inputs.timeout.total_seconds()
            deadline = own if deadline is None else min(deadline, own)
        done = proc.run(argv, ctx, cwd=inputs.cwd, env=inputs.env, emit=True, check=False, deadline=deadline,
                        stderr_prefix="stderr: ")
        outputs: dict[str, Any] = {"exit_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
        if done.returncode != 0 and done.returncode not in inputs.allow_exit_codes:
            tail = done.stderr.strip().splitlines()[-1:] or [""]
            raise StepFailed(f"{argv[0]} exited with {done.returncode}" + (f": {tail[0][:300]}" if tail[0] else ""),
                             outputs)
        return outputs
