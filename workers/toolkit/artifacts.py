"""Where a step's files go: $RUNBOOKD_ARTIFACTS_DIR/<run id>/<step id>/, listed in its outputs by name."""

from __future__ import annotations

from pathlib import Path

from workers.steps.base import StepContext


def step_dir(ctx: StepContext) -> Path:
    """This step's artifact directory, created on first use; a retried attempt writes over the same names."""
    assert ctx.settings.artifacts_dir is not None  # derived from home by Settings
    path = ctx.settings.artifacts_dir / str(ctx.run_id) / ctx.step_id
    path.mkdir(parents=True, exist_ok=True)
    return path
