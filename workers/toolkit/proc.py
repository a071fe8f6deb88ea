"""Run a tool as a child in its own process group, killed as a group on timeout or cancel, and sent SIGTERM
when the process that started it dies (server.stack.die_with_parent)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from server.stack import die_with_parent
from workers.steps.base import StepCancelled, StepContext, StepFailed, StepInterrupted, StepTimedOut
from workers.toolkit.env import step_environment

# Kept in memory per stream (the rest is read and dropped); a step's outputs over RUNBOOKD_STEP_OUTPUT_CAP
# become an artifact anyway. Tools that write more write to files instead.
STREAM_LIMIT = 8 * 1024 * 1024
TERM_GRACE_S = 1.0


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def tail(self, lines: int = 3) -> str:
        """The last lines of stderr (or stdout), for an error message."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()[-lines:]
        return " | ".join(line.strip() for line in text)[:500]


def find_tool(name: str, hint: str) -> str:
    """A tool's path: next to this interpreter first (py-spy installed in the venv), then PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise StepFailed(f"{name} is not installed on this worker: {hint}")
    return found


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the whole group, then KILL what is left, so grandchildren (git bisect's tests) die too; descendants
    that moved to a group of their own (timeout(1) does) are found through the process tree first."""
    try:
        strays = [p for p in psutil.Process(proc.pid).children(recursive=True)
                  if os.getpgid(p.pid) != proc.pid]
    except (psutil.Error, ProcessLookupError):
        strays = []
    for stray in strays:
        with contextlib.suppress(psutil.Error):
            stray.kill()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(TERM_GRACE_S)
            os.killpg(proc.pid, signal.SIGKILL)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
        return


def _pump(stream: IO[bytes], sink: list[bytes], emit: Callable[[str], None] | None, prefix: str = "") -> None:
    size = 0
    for raw in iter(stream.readline, b""):
        if size < STREAM_LIMIT:
            sink.append(raw[: STREAM_LIMIT - size])
            size += len(raw)
        if emit is not None:
            emit(prefix + raw.decode(errors="replace").rstrip("\n"))
    stream.close()


def allow_core_dumps() -> None:
    """preexec_fn: lift RLIMIT_CORE so a crashing child leaves a core for coredump.analyze."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def run(command: Sequence[str | os.PathLike[str]], ctx: StepContext, *, timeout: float | None = None,
        cwd: str | Path | None = None, env: dict[str, str] | None = None, emit: bool = False,
        check: bool = True, deadline: float | None = None, stderr_prefix: str = "") -> Completed:
    """Run argv to completion.

    StepCancelled on cancel, StepTimedOut when the step's deadline (ctx.deadline, or `deadline` when given)
    passes: the engine records the step as timed out. StepFailed when it cannot start, when it overruns
    its own `timeout` (the tool hung: the step failed, and says which tool), or (with check) when it exits
    non-zero. With emit, every line goes out live (stderr's after `stderr_prefix`).
    """
    argv = [os.fspath(a) for a in command]
    step_deadline = ctx.deadline if deadline is None else deadline
    started = time.monotonic()
    own_deadline = None if timeout is None else started + timeout
    try:
        # The tool dies with the worker's process even when that is SIGKILLed (the OOM killer, a lost pod),
        # rather than run on unwatched, holding what it works on, with no run to report to.
        proc = subprocess.Popen(argv, cwd=cwd, env=step_environment(ctx.settings, env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=die_with_parent)
    except OSError as exc:
        raise StepFailed(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
    out: list[bytes] = []
    err: list[bytes] = []
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, ctx.emit if emit else None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, err, ctx.emit if emit else None, stderr_prefix),
                              daemon=True)]
    for pump in pumps:
        pump.start()
    interrupted: StepInterrupted | None = None
    overran = False
    try:
        while proc.poll() is None:
            if ctx.cancelled.wait(0.05):
                interrupted = StepCancelled()
            elif step_deadline is not None and time.monotonic() >= step_deadline:
                interrupted = StepTimedOut()
            elif own_deadline is not None and time.monotonic() >= own_deadline:
                overran = True
            if interrupted or overran:
                break
    finally:
        if proc.poll() is None:
            kill_group(proc)
        proc.wait()
    for pump in pumps:
        pump.join(2)
    if interrupted:
        raise interrupted
    done = Completed(argv, proc.returncode, b"".join(out).decode(errors="replace"),
                     b"".join(err).decode(errors="replace"), round(time.monotonic() - started, 3))
    if overran:
        raise StepFailed(f"{Path(argv[0]).name} timed out after {done.seconds:.1f}s and was killed: {done.tail()}")
    if check and done.returncode != 0:
        raise StepFailed(f"{Path(argv[0]).name} exited with {done.returncode}: {done.tail()}")
    return done
