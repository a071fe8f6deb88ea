"""Runbooks the api offers: files under RUNBOOKD_RUNBOOKS_DIR plus uploads kept in the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from server.audit import service as audit
from server.auth.models import Actor
from server.durations import format_duration
from server.errors import Conflict, InvalidInput, NotFound
from server.runbooks.models import RunbookDetail, RunbookSummary, StepSummary, UploadedRunbook
from server.runbooks.store import RunbookStore, Snapshot
from server.runbooks.validation import Checked, Problem, check_text


@dataclass
class Entry:
    checked: Checked
    source: str  # "file" or "upload"
    uploaded_at: datetime | None = None


_stores: dict[Path, RunbookStore] = {}


def store_for(directory: Path) -> RunbookStore:
    if directory not in _stores:
        _stores[directory] = RunbookStore(directory)
    return _stores[directory]


@lru_cache(maxsize=256)
def _checked_upload(content: str, runbook_id: str) -> Checked:
    return check_text(content, f"upload:{runbook_id}.yaml")


def _uploads(session: Session) -> list[Entry]:
    entries = []
    for row in session.exec(select(UploadedRunbook).order_by(UploadedRunbook.runbook_id)):
        checked = _checked_upload(row.content, row.runbook_id)
        if checked.runbook is not None:
            entries.append(Entry(checked, "upload", row.uploaded_at))
    return entries


def list_runbooks(session: Session, *, store: RunbookStore) -> tuple[list[Entry], list[Problem]]:
    """Every usable runbook (files first, then uploads), and the problems of files that were skipped."""
    snap = store.snapshot()
    entries = [Entry(c, "file") for _id, c in sorted(snap.runbooks.items())]
    entries += [e for e in _uploads(session) if e.checked.runbook and e.checked.runbook.id not in snap.runbooks]
    return entries, snap.problems


def get_runbook(session: Session, *, store: RunbookStore, runbook_id: str) -> Entry:
    snap = store.snapshot()
    if runbook_id in snap.runbooks:
        return Entry(snap.runbooks[runbook_id], "file")
    row = session.exec(select(UploadedRunbook).where(UploadedRunbook.runbook_id == runbook_id)).one_or_none()
    if row is not None:
        checked = _checked_upload(row.content, row.runbook_id)
        if checked.runbook is not None:
            return Entry(checked, "upload", row.uploaded_at)
    broken = [p for p in snap.problems if Path(p.file).stem == runbook_id and p.severity == "error"]
    if broken:
        raise NotFound(f"runbook {runbook_id!r} is invalid and was skipped: {broken[0]}",
                       details=[p.as_dict() for p in broken])
    known = ", ".join(sorted(snap.runbooks)[:20]) or "none"
    raise NotFound(f"no runbook {runbook_id!r}; known runbooks: {known}")


def reload(*, store: RunbookStore) -> Snapshot:
    return store.reload()


def upload(session: Session, *, store: RunbookStore, content: str, actor: Actor) -> Entry:
    """Validate and store (or replace) an uploaded runbook, audited in the same transaction."""
    checked = check_text(content, "upload.yaml")
    if checked.runbook is None:
        raise InvalidInput(f"runbook is invalid: {len(checked.errors)} error(s); first: {checked.errors[0]}",
                           details=[p.as_dict() for p in checked.errors])
    runbook_id = checked.runbook.id
    if runbook_id in store.snapshot().runbooks:
        raise Conflict(f"runbook {runbook_id!r} is a file under the runbooks directory; upload it under another id")
    row = session.exec(select(UploadedRunbook).where(UploadedRunbook.runbook_id == runbook_id)).one_or_none()
    before = {"content_hash": row.content_hash} if row else None
    if row is None:
        row = UploadedRunbook(runbook_id=runbook_id, content=content, content_hash=checked.content_hash,
                              uploaded_by=actor.name)
    else:
        row.content, row.content_hash, row.uploaded_by = content, checked.content_hash, actor.name
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="runbook.upload", target_type="runbook", target_id=runbook_id,
                 before=before, after={"content_hash": checked.content_hash, "title": checked.runbook.title})
    return Entry(check_text(content, f"upload:{runbook_id}.yaml"), "upload", row.uploaded_at)


def summary(entry: Entry) -> RunbookSummary:
    rb = entry.checked.runbook
    assert rb is not None
    return RunbookSummary(id=rb.id, title=rb.title, description=rb.description, tags=rb.tags, source=entry.source,
                          content_hash=entry.checked.content_hash)


def detail(entry: Entry) -> RunbookDetail:
    rb = entry.checked.runbook
    assert rb is not None
    params: dict[str, Any] = {
        name: {**spec.model_dump(exclude_none=True), "required": spec.is_required}
        | ({"default": "***"} if spec.secret and spec.default is not None else {})
        for name, spec in rb.params.items()
    }
    steps = [StepSummary(id=s.id, title=s.title, phase=s.phase, uses=s.uses, approval=s.approval, on=s.on)
             for s in rb.steps]
    return RunbookDetail(**summary(entry).model_dump(), params=params, steps=steps,
                         timeout=format_duration(rb.timeout) if rb.timeout else None, concurrency=rb.concurrency,
                         on_failure=rb.on_failure, outputs=rb.outputs, content=entry.checked.text,
                         uploaded_at=entry.uploaded_at)
