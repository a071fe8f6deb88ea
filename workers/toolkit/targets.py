"""Resolve the process a step looks at: a pid, a pid file, or a command-line match."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from server.runbooks.toolkit_kinds import ProcessTarget
from workers.steps.base import StepFailed


def _own_lineage() -> set[int]:
    """This worker and its ancestors: a command-line match must never pick the process searching for it."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def resolve_pid(target: ProcessTarget) -> int:
    """The target's pid, checked to be alive; StepFailed saying why not."""
    if target.pid is not None:
        pid = target.pid
    elif target.pid_file:
        try:
            pid = int(Path(target.pid_file).read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise StepFailed(f"cannot read a pid from {target.pid_file}: {exc}") from None
    else:
        pid = _match(target.process or "")
    if not psutil.pid_exists(pid):
        raise StepFailed(f"no process with pid {pid}")
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            raise StepFailed(f"process {pid} has already exited (zombie)")
    except psutil.NoSuchProcess:
        raise StepFailed(f"no process with pid {pid}") from None
    return pid


def _match(needle: str) -> int:
    skip = _own_lineage()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["pid"] in skip or not cmdline:
            continue
        if needle in " ".join(cmdline):
            found.append(proc)
    if not found:
        raise StepFailed(f"no process whose command line contains {needle!r}")
    # The oldest match is the long-lived one (a server's master, not a short-lived helper it forked).
    return min(found, key=lambda p: (p.info["create_time"], p.info["pid"])).info["pid"]


def process_label(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:200]
    except psutil.Error:
        return str(pid)


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
