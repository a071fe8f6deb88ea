"""A run's artifacts in the database: stored in chunks, read back chunk by chunk, swept when expired.

Workers store (workers/artifacts.py), api replicas serve (server/runs/artifacts.py) and beat sweeps, all
through these Core statements, so any replica serves any artifact and no node's loss takes one with it.

- An artifact is written in one transaction, its row and every chunk: a reader sees all of it or nothing.
  Writing a name the run already has replaces it (a resumed step's attempt writes its files again).
- A run's artifacts together stay under RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES: one that would pass it raises
  OverCap and nothing of it is written.
- The retention sweep deletes artifacts older than RUNBOOKD_ARTIFACTS_RETENTION, a bounded batch per
  transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlmodel import Session

from server.models_base import as_utc, utcnow
from server.runs.artifact_models import RunArtifact, RunArtifactChunk

CHUNK_BYTES = 256 * 1024  # one row of run_artifact_chunks: small enough for any driver, message or backup
INSERT_BATCH = 8  # chunks per INSERT (2 MiB): a big file never sits in memory whole
READ_BATCH = 4  # chunks per SELECT while serving (1 MiB), each in a short transaction of its own
SWEEP_BATCH = 50  # artifacts deleted per transaction by the retention sweep
SWEEP_MAX_BATCHES = 20  # per sweep; the next sweep carries on

_ART = RunArtifact.__table__  # type: ignore[attr-defined]
_CHUNK = RunArtifactChunk.__table__  # type: ignore[attr-defined]
_COLUMNS = (_ART.c.id, _ART.c.run_id, _ART.c.name, _ART.c.step_id, _ART.c.content_type, _ART.c.size,
            _ART.c.sha256, _ART.c.created_at)


class OverCap(Exception):
    """Storing this artifact would take the run past RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES; nothing was written."""


@dataclass(frozen=True)
class Stored:
    """An artifact's row, without its bytes."""

    id: int
    run_id: int
    name: str
    step_id: str | None
    content_type: str
    size: int
    sha256: str
    created_at: datetime


def _stored(row: Any) -> Stored:
    return Stored(id=row.id, run_id=row.run_id, name=row.name, step_id=row.step_id, content_type=row.content_type,
                  size=int(row.size), sha256=row.sha256, created_at=as_utc(row.created_at))


def mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


# -- writing ---------------------------------------------------------------------------------------
def pieces(source: bytes | Path) -> Iterator[bytes]:
    """The source in CHUNK_BYTES pieces, a file read as it goes."""
    if isinstance(source, bytes):
        for start in range(0, len(source), CHUNK_BYTES):
            yield source[start:start + CHUNK_BYTES]
        return
    with source.open("rb") as file:
        while piece := file.read(CHUNK_BYTES):
            yield piece


def run_bytes(conn: Connection | Session, run_id: int, *, besides: str | None = None) -> int:
    """Bytes of artifacts the run has stored (leaving out the one named `besides`)."""
    query = select(func.coalesce(func.sum(_ART.c.size), 0)).where(_ART.c.run_id == run_id)
    if besides is not None:
        query = query.where(_ART.c.name != besides)
    return int(conn.execute(query).scalar_one())


def _check_cap(used: int, size: int, cap: int, name: str) -> None:
    if used + size > cap:
        raise OverCap(f"artifact {name} ({mib(size)}) not stored: the run's artifacts would take "
                      f"{mib(used + size)}, over RUNBOOKD_ARTIFACTS_MAX_RUN_BYTES ({mib(cap)}); "
                      f"{mib(max(0, cap - used))} left")


def store(conn: Connection, *, run_id: int, name: str, step_id: str | None, content_type: str,
          source: bytes | Path, size: int, max_run_bytes: int) -> Stored:
    """Store an artifact in the caller's transaction (commit it to publish the whole artifact at once).

    `size` is what the caller expects (checked against the cap before a byte is written); what is stored is
    what was read. Raises OverCap, having written nothing the caller's rollback would not undo."""
    used = run_bytes(conn, run_id, besides=name)
    _check_cap(used, size, max_run_bytes, name)
    old = conn.execute(select(_ART.c.id).where(and_(_ART.c.run_id == run_id, _ART.c.name == name))).scalars().all()
    _delete(conn, list(old))
    now = utcnow()
    inserted = conn.execute(insert(_ART).values(run_id=run_id, name=name, step_id=step_id, content_type=content_type,
                                                size=size, sha256="", created_at=now)).inserted_primary_key
    assert inserted is not None
    artifact_id = int(inserted[0])
    digest, total = hashlib.sha256(), 0
    batch: list[dict[str, Any]] = []
    for seq, piece in enumerate(pieces(source)):
        digest.update(piece)
        total += len(piece)
        _check_cap(used, total, max_run_bytes, name)  # a file that grew while it was read
        batch.append({"artifact_id": artifact_id, "seq": seq, "data": piece})
        if len(batch) >= INSERT_BATCH:
            conn.execute(insert(_CHUNK), batch)
            batch = []
    if batch:
        conn.execute(insert(_CHUNK), batch)
    conn.execute(update(_ART).where(_ART.c.id == artifact_id).values(size=total, sha256=digest.hexdigest()))
    return Stored(id=artifact_id, run_id=run_id, name=name, step_id=step_id, content_type=content_type,
                  size=total, sha256=digest.hexdigest(), created_at=now)


def _delete(conn: Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute(delete(_CHUNK).where(_CHUNK.c.artifact_id.in_(ids)))
        conn.execute(delete(_ART).where(_ART.c.id.in_(ids)))


# -- reading ---------------------------------------------------------------------------------------
def of_run(conn: Connection | Session, run_id: int) -> list[Stored]:
    """A run's artifacts by name, without their bytes."""
    rows = conn.execute(select(*_COLUMNS).where(_ART.c.run_id == run_id).order_by(_ART.c.name)).all()
    return [_stored(r) for r in rows]


def find(conn: Connection | Session, run_id: int, name: str) -> Stored | None:
    row = conn.execute(select(*_COLUMNS).where(and_(_ART.c.run_id == run_id, _ART.c.name == name))).first()
    return None if row is None else _stored(row)


def chunks(engine: Engine, artifact: Stored) -> Iterator[bytes]:
    """An artifact's bytes in order, READ_BATCH chunks per query, each query on a connection of its own: a
    slow client holds no transaction (on SQLite, no lock) while it reads. Ends early if the artifact was
    replaced meanwhile (the response then falls short of its Content-Length, which clients notice): each
    query reads chunks only while the row still has the SHA-256 the reader started with (SQLite may give a
    replacement the same id)."""
    seq, sent = 0, 0
    while sent < artifact.size:
        with engine.connect() as conn:
            rows = conn.execute(select(_CHUNK.c.seq, _CHUNK.c.data)
                                .join(_ART, _ART.c.id == _CHUNK.c.artifact_id)
                                .where(and_(_CHUNK.c.artifact_id == artifact.id, _ART.c.sha256 == artifact.sha256,
                                            _CHUNK.c.seq >= seq, _CHUNK.c.seq < seq + READ_BATCH))
                                .order_by(_CHUNK.c.seq)).all()
            conn.rollback()
        if not rows:
            return
        for row in rows:
            if row.seq != seq:
                return
            data = bytes(row.data)
            sent += len(data)
            seq += 1
            yield data


def read_all(conn: Connection | Session, artifact_id: int) -> bytes:
    """An artifact's bytes at once (tests, small artifacts)."""
    rows = conn.execute(select(_CHUNK.c.data).where(_CHUNK.c.artifact_id == artifact_id)
                        .order_by(_CHUNK.c.seq)).scalars().all()
    return b"".join(bytes(r) for r in rows)


# -- retention -------------------------------------------------------------------------------------
def sweep_expired(engine: Engine, *, older_than: timedelta, batch: int = SWEEP_BATCH,
                  max_batches: int = SWEEP_MAX_BATCHES, now: datetime | None = None) -> int:
    """Delete artifacts created more than `older_than` ago, oldest first, `batch` per transaction and at
    most `max_batches` transactions (the next sweep carries on); returns how many were deleted."""
    cutoff = (now or utcnow()) - older_than
    removed = 0
    for _ in range(max_batches):
        with engine.begin() as conn:
            ids = conn.execute(select(_ART.c.id).where(_ART.c.created_at < cutoff)
                               .order_by(_ART.c.created_at, _ART.c.id).limit(batch)).scalars().all()
            _delete(conn, list(ids))
        removed += len(ids)
        if len(ids) < batch:
            break
    return removed


def store_all(engine: Engine, *, run_id: int, items: Iterable[tuple[str, str | None, str, bytes]],
              max_run_bytes: int) -> list[Stored]:
    """Store (name, step_id, content_type, data) items, each in a transaction of its own (tests, tools)."""
    stored = []
    for name, step_id, content_type, data in items:
        with engine.begin() as conn:
            stored.append(store(conn, run_id=run_id, name=name, step_id=step_id, content_type=content_type,
                                source=data, size=len(data), max_run_bytes=max_run_bytes))
    return stored
