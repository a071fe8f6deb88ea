"""Runbooks from RUNBOOKD_RUNBOOKS_DIR, reloaded when a file changes; a bad file is reported and skipped."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.runbooks.validation import Checked, Problem, check_text

log = logging.getLogger("runbookd.runbooks")
RESCAN_INTERVAL_S = 1.0  # how stale a listing may be: one stat of the directory per second at most
TRIGGER_SUFFIX = ".triggers.yaml"  # trigger-rule files (server.hooks.rules) live beside runbooks but are not ones


@dataclass
class Snapshot:
    runbooks: dict[str, Checked] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    signature: tuple[tuple[str, int, int], ...] = ()
    loaded_at: float = 0.0


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        files = sorted(p for p in directory.rglob("*.yaml") if not p.name.endswith(TRIGGER_SUFFIX))
    except OSError:
        return ()
    out = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def load_directory(directory: Path) -> Snapshot:
    """Validate every *.yaml under directory; duplicates of an id keep the first file and report the rest."""
    snap = Snapshot(signature=_signature(directory), loaded_at=time.monotonic())
    if not directory.is_dir():
        snap.problems.append(Problem(str(directory), 1, 1, "runbooks directory does not exist; "
                                     "set RUNBOOKD_RUNBOOKS_DIR to a directory of *.yaml files"))
        return snap
    for name, _mtime, _size in snap.signature:
        path = Path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            snap.problems.append(Problem(str(path), 1, 1, f"cannot read the file: {exc}"))
            continue
        checked = check_text(text, str(path))
        snap.problems.extend(checked.problems)
        if checked.runbook is None:
            log.warning("runbook skipped: invalid", extra={"file": str(path), "errors": len(checked.errors)})
            continue
        other = snap.runbooks.get(checked.runbook.id)
        if other is not None:
            snap.problems.append(Problem(str(path), 1, 1, f"runbook id {checked.runbook.id!r} is already used by "
                                         f"{other.source}; this file is skipped"))
            continue
        snap.runbooks[checked.runbook.id] = checked
    return snap


class RunbookStore:
    """Thread-safe, lazily rescanned view of a directory of runbooks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._snapshot = Snapshot()

    def snapshot(self, *, force: bool = False) -> Snapshot:
        with self._lock:
            snap = self._snapshot
            due = force or not snap.loaded_at or time.monotonic() - snap.loaded_at > RESCAN_INTERVAL_S
            if due:
                if force or _signature(self.directory) != snap.signature or not snap.loaded_at:
                    self._snapshot = load_directory(self.directory)
                else:
                    snap.loaded_at = time.monotonic()
            return self._snapshot

    def reload(self) -> Snapshot:
        return self.snapshot(force=True)
