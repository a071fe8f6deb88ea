"""A StepContext for calling the toolkit's step kinds directly, and the checks their tests skip on."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine

from server.settings import Settings
from tests.conftest import TEST_ACTOR
from workers.steps.base import StepContext

_run_ids = itertools.count(1)


def make_ctx(home: Path, *, step_id: str = "step", timeout: float | None = 60) -> StepContext:
    """The context the engine would give: these kinds never touch the database, so its engine is unused."""
    settings = Settings(home=home)
    lines: list[str] = []
    ctx = StepContext(run_id=next(_run_ids), step_id=step_id, attempt=1, actor=TEST_ACTOR, incident_id=None,
                      settings=settings, engine=create_engine("sqlite://"),
                      deadline=None if timeout is None else time.monotonic() + timeout, emit=lines.append)
    ctx.lines = lines  # type: ignore[attr-defined]
    return ctx


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def ptrace_problem(pid: int) -> str | None:
    """Why py-spy cannot read this process (no py-spy, ptrace denied), or None."""
    tool = py_spy()
    if tool is None:
        return "py-spy is not installed (pip install py-spy)"
    done = subprocess.run([tool, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"py-spy cannot attach (ptrace denied? run as root or with CAP_SYS_PTRACE): {done.stderr.strip()[:200]}"
    return None


def start_python(code: str, tmp: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    script = tmp / f"target_{os.getpid()}_{time.monotonic_ns()}.py"
    script.write_text(code)
    return subprocess.Popen([sys.executable, str(script)], start_new_session=True, **kwargs)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def wait_for_children_gone(pid_file: Path, timeout: float = 10) -> bool:
    """True once the pid written to pid_file no longer runs (a killed grandchild)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = int(pid_file.read_text()) if pid_file.exists() and pid_file.read_text().strip() else None
        if pid is not None and (not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE):
            return True
        time.sleep(0.05)
    return False
