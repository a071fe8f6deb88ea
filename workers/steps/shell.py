from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from typing import IO, Any

from server.runbooks.kinds import ShellInputs
from workers.steps.base import Step, StepCancelled, StepContext, StepFailed, StepInterrupted, StepTimedOut, register
from workers.toolkit.proc import kill_group

# What one stream may hold in memory; the engine moves anything over the per-step cap to an artifact.
STREAM_LIMIT = 8 * 1024 * 1024


def _pump(stream: IO[bytes], sink: list[bytes], ctx: StepContext, prefix: str) -> None:
    size = 0
    for raw in iter(stream.readline, b""):
        if size < STREAM_LIMIT:
            sink.append(raw[: STREAM_LIMIT - size])
            size += len(raw)
        ctx.emit(prefix + raw.decode(errors="replace").rstrip("\n"))
    stream.close()


@register("shell")
class Shell(Step[ShellInputs]):
    def run(self, inputs: ShellInputs, ctx: StepContext) -> dict[str, Any]:
        argv = inputs.argv if inputs.argv is not None else shlex.split(inputs.command or "")
        env = {**os.environ, **inputs.env}
        deadline = ctx.deadline
        if inputs.timeout is not None:
            own = time.monotonic() + inputs.timeout.total_seconds()
            deadline = own if deadline is None else min(deadline, own)
        try:
            proc = subprocess.Popen(argv, cwd=inputs.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise StepFailed(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        out: list[bytes] = []
        err: list[bytes] = []
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, ctx, ""), daemon=True),
                 threading.Thread(target=_pump, args=(proc.stderr, err, ctx, "stderr: "), daemon=True)]
        for pump in pumps:
            pump.start()
        interrupted: StepInterrupted | None = None
        while proc.poll() is None:
            if ctx.cancelled.wait(0.05):
                interrupted = StepCancelled()
            elif deadline is not None and time.monotonic() >= deadline:
                interrupted = StepTimedOut()
            if interrupted:
                kill_group(proc)
                break
        proc.wait()
        for pump in pumps:
            pump.join(2)
        stderr = b"".join(err).decode(errors="replace")
        outputs: dict[str, Any] = {"exit_code": proc.returncode, "stdout": b"".join(out).decode(errors="replace"),
                                   "stderr": stderr}
        if interrupted:
            raise interrupted
        if proc.returncode != 0 and proc.returncode not in inputs.allow_exit_codes:
            tail = stderr.strip().splitlines()[-1:] or [""]
            raise StepFailed(f"{argv[0]} exited with {proc.returncode}" + (f": {tail[0][:300]}" if tail[0] else ""),
                             outputs)
        return outputs
