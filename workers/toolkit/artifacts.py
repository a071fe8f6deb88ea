"""A step's files, in the engine's layout (workers/artifacts.py): written to this worker's scratch,
$RUNBOOKD_ARTIFACTS_DIR/run-<id>/<name>, then stored in the database by the engine when the attempt ends, so
GET /api/v1/runs/<id>/artifacts/<name> serves them from any api replica. Names are `<step>.<attempt>.<file>`;
outputs list them under `files` (the engine's own `artifacts` key is for outputs it had to move out of the
outputs' row). The scratch copy stays until the run ends on this worker, for a later step that reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from workers.artifacts import _safe, artifact_path
from workers.steps.base import StepContext


def artifact(ctx: StepContext, name: str) -> Path:
    """Where this step attempt writes its file `name`; the run's directory is created on first use."""
    assert ctx.settings.artifacts_dir is not None  # derived from home by Settings
    path = artifact_path(ctx.settings.artifacts_dir, ctx.run_id, f"{_safe(ctx.step_id)}.{ctx.attempt}.{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def ref(path: Path) -> dict[str, Any]:
    """How outputs point at a file: its artifact name (for the API), size, and scratch path on the worker (gone
    once the run ends)."""
    return {"artifact": path.name, "size": path.stat().st_size, "path": str(path)}


def within(items: list[Any], max_bytes: int) -> list[Any]:
    """The longest prefix of items whose JSON fits max_bytes: outputs must stay under the engine's cap, or it
    moves them all to a file and later steps lose them."""
    kept, size = [], 2
    for item in items:
        size += len(orjson.dumps(item, default=str)) + 1
        if size > max_bytes:
            break
        kept.append(item)
    return kept
