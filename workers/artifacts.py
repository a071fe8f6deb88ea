"""A step's artifacts go to the database (server/runs/artifact_store.py), never only to this worker's disk.

Two kinds: step outputs over RUNBOOKD_STEP_OUTPUT_CAP (the row keeps a head, the whole value becomes an
artifact), and files a toolkit step wrote to its scratch path (workers/toolkit/artifacts.py). After each
attempt the engine stores both, each artifact in one transaction. What would take the run over
RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES is not stored, and the step's outputs say so (`artifacts_not_stored`). The
scratch directory of a run is removed when the run ends on this worker (a later step may still read a file:
a core dump gdb opens); the scratch of a run whose worker died with it is removed when a worker starts on this
directory and finds the run finished (sweep_scratch)."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine
from sqlmodel import Session, col, select

from server.runs import artifact_store
from server.runs.artifacts import content_type
from server.runs.models import Run, RunStatus

HEAD_CHARS = 4096
# Kinds of file that are text and get the run's secret values masked, as outputs do; binary files (a core
# dump) are stored as they are.
TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "image/svg+xml")
NOT_STORED = "artifacts_not_stored"  # outputs key: {name: why}

log = logging.getLogger("runbookd.engine")

Put = Callable[[str, "bytes | Path"], "str | None"]  # store an artifact; the reason it was not stored, or None


def to_json(value: Any) -> Any:
    """Outputs as plain JSON types (what the database and later steps see)."""
    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


def scratch_dir(directory: Path, run_id: int) -> Path:
    """A run's scratch directory on this worker."""
    return directory / f"run-{run_id}"


def artifact_path(directory: Path, run_id: int, name: str) -> Path:
    """A file's scratch path on this worker: where a tool writes it before it is stored."""
    return scratch_dir(directory, run_id) / name


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def cap_outputs(outputs: dict[str, Any], *, step_id: str, attempt: int, cap: int, put: Put) -> dict[str, Any]:
    """Move the largest string outputs to artifacts until the rest fits in cap bytes."""
    outputs = to_json(outputs)
    if len(orjson.dumps(outputs)) <= cap:
        return outputs
    refs: dict[str, Any] = {}
    refused: dict[str, str] = dict(outputs.get(NOT_STORED) or {})
    for field in sorted((k for k, v in outputs.items() if isinstance(v, str)), key=lambda k: -len(outputs[k])):
        if len(orjson.dumps(outputs)) <= cap:
            break
        name = f"{_safe(step_id)}.{attempt}.{_safe(field)}.txt"
        data = outputs[field].encode()
        why = put(name, data)
        outputs[field] = outputs[field][:HEAD_CHARS]
        refs[field] = {"artifact": name, "size": len(data), "head_chars": HEAD_CHARS}
        if why:
            refs[field].update(stored=False, error=why)
            refused[name] = why
    if len(orjson.dumps(outputs)) > cap:
        # Still too big (a huge JSON body, many headers): keep the whole thing as one JSON artifact.
        name = f"{_safe(step_id)}.{attempt}.outputs.json"
        data = orjson.dumps(outputs)
        why = put(name, data)
        outputs = {"truncated": True}
        refs["*"] = {"artifact": name, "size": len(data)}
        if why:
            refs["*"].update(stored=False, error=why)
            refused[name] = why
    outputs["artifacts"] = refs
    if refused:
        outputs[NOT_STORED] = refused
    return outputs


@dataclass
class StepArtifacts:
    """One step attempt's artifacts, stored in the run's database as the engine finishes the attempt."""

    engine: Engine
    directory: Path  # the worker's scratch (RUNBOOKD_ARTIFACTS_DIR)
    run_id: int
    step_id: str
    attempt: int
    max_run_bytes: int
    scrub: Callable[[str], str] | None = None  # the run's secret masking, for text artifacts; None: no secrets
    fence: Callable[[Connection], None] = lambda conn: None  # the journal's: only a run still ours writes

    def put(self, name: str, source: bytes | Path) -> str | None:
        """Store one artifact (its bytes, or a scratch file) in a transaction of its own; the reason when it
        was not stored (over the run's cap), else None."""
        kind = content_type(name)
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if self.scrub is not None and kind.startswith(TEXT_TYPES) and size <= self.max_run_bytes:
            raw = source if isinstance(source, bytes) else source.read_bytes()
            try:
                source = self.scrub(raw.decode()).encode()
            except UnicodeDecodeError:
                source = raw  # not text after all: stored as it is
            size = len(source)
        try:
            with self.engine.begin() as conn:
                self.fence(conn)  # RunLost, nothing written, when the run was taken over meanwhile
                artifact_store.store(conn, run_id=self.run_id, name=name, step_id=self.step_id, content_type=kind,
                                     source=source, size=size, max_run_bytes=self.max_run_bytes)
        except artifact_store.OverCap as exc:
            log.warning("artifact not stored", extra={"run_id": self.run_id, "step_id": self.step_id,
                                                      "artifact": name, "reason": str(exc)})
            return str(exc)
        return None

    def scratch_files(self) -> list[Path]:
        """The files this attempt wrote to its scratch paths (`<step>.<attempt>.<file>`)."""
        directory = scratch_dir(self.directory, self.run_id)
        if not directory.is_dir():
            return []
        prefix = f"{_safe(self.step_id)}.{self.attempt}."
        return sorted(p for p in directory.iterdir() if p.name.startswith(prefix) and p.is_file())

    def collect(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """Store the attempt's scratch files; outputs gain `artifacts_not_stored` {name: why} for any refused,
        and a refused file's ref in `files` says `stored: false`."""
        refused = {}
        for path in self.scratch_files():
            why = self.put(path.name, path)
            if why:
                refused[path.name] = why
        if not refused:
            return outputs
        files = outputs.get("files")
        if isinstance(files, dict):
            for ref in files.values():
                if isinstance(ref, dict) and ref.get("artifact") in refused:
                    ref.update(stored=False, error=refused[ref["artifact"]])
        return {**outputs, NOT_STORED: {**(outputs.get(NOT_STORED) or {}), **refused}}


def discard_scratch(directory: Path | None, run_id: int) -> None:
    """The run's scratch files on this worker, once the run has ended (everything kept is in the database)."""
    if directory is not None:
        shutil.rmtree(scratch_dir(directory, run_id), ignore_errors=True)


SCRATCH_NAME = re.compile(r"run-([0-9]{1,10})")
FINISHED = [s.value for s in RunStatus if s.finished]
RUN_ID_MAX = 2**31 - 1  # runs.id is a 32-bit integer on PostgreSQL: a larger number is no run's (nor a query's)


def sweep_scratch(engine: Engine, directory: Path | None, *, chunk: int = 500) -> list[int]:
    """Remove the scratch directories of finished runs (left by a worker that died before their end); returns
    their run ids. A run not finished (running on another worker sharing the directory, waiting for an approval,
    queued to resume here) and a directory of a run this database does not know keep theirs."""
    if directory is None or not directory.is_dir():
        return []
    found = {int(m.group(1)): path for path in directory.iterdir()
             if (m := SCRATCH_NAME.fullmatch(path.name)) and int(m.group(1)) <= RUN_ID_MAX
             and path.is_dir() and not path.is_symlink()}
    ids = sorted(found)
    finished: list[int] = []
    with Session(engine) as session:
        for start in range(0, len(ids), chunk):
            rows = session.exec(select(Run.id).where(col(Run.id).in_(ids[start:start + chunk]),
                                                     col(Run.status).in_(FINISHED))).all()
            finished += [run_id for run_id in rows if run_id is not None]
    finished.sort()
    for run_id in finished:
        shutil.rmtree(found[run_id], ignore_errors=True)
    return finished
