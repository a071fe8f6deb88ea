from __future__ import annotations

import glob
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.runbooks.toolkit_kinds import LogsSearchInputs
from workers.steps.base import Step, StepContext, StepFailed, StepTimedOut, register
from workers.toolkit.artifacts import artifact, ref, within
from workers.toolkit.findings import finding
from workers.toolkit.logsearch import Query, Searcher, parse_when

OVERFLOW_LIMIT = 256 * 1024 * 1024  # every match beyond the outputs' cap goes to an artifact, up to this size


def expand(patterns: list[str]) -> list[Path]:
    """Files named by paths or globs, each once, in a stable order (rotated logs: oldest name last is fine)."""
    seen: dict[Path, None] = {}
    for pattern in patterns:
        names = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        for name in names:
            path = Path(name)
            if path.is_file():
                seen.setdefault(path.resolve(), None)
    return list(seen)


def build_query(inputs: LogsSearchInputs, now: datetime) -> Query:
    try:
        since = parse_when(inputs.since, now) if inputs.since else None
        until = parse_when(inputs.until, now) if inputs.until else None
        return Query(since=since, until=until, level=inputs.level, equals=inputs.equals, contains=inputs.contains,
                     regex=inputs.regex, text=inputs.text, request_id=inputs.request_id, group_by=inputs.group_by,
                     top=inputs.top, limit=inputs.limit, time_field=inputs.time_field, level_field=inputs.level_field)
    except (ValueError, re.error) as exc:
        raise StepFailed(f"bad search: {exc}") from None


def _findings(outputs: dict[str, Any], overflow: Any) -> list[dict[str, Any]]:
    """One finding per top group of matches (error groups), or one for the whole count."""
    if not outputs["matched"]:
        return [finding("info", f"no matches in {outputs['lines_scanned']} lines", output="matched")]
    evidence = {"artifact": overflow} if overflow is not None else {"output": "matches"}
    groups = outputs["groups"][:5]
    if not groups:
        return [finding("warning", f"{outputs['matched']} matching log lines", **evidence)]
    return [finding("warning", f"{group['count']} x " + ", ".join(f"{k}={v}" for k, v in group.items()
                                                                 if k != "count"), **evidence)
            for group in groups]


@register("logs.search")
class LogsSearch(Step[LogsSearchInputs]):
    def run(self, inputs: LogsSearchInputs, ctx: StepContext) -> dict[str, Any]:
        files = expand(inputs.paths)
        if not files:
            raise StepFailed(f"no log file matches {', '.join(inputs.paths)}")
        query = build_query(inputs, datetime.now(UTC))
        overflow_path = artifact(ctx, "matches.jsonl")
        started = time.perf_counter()

        def check() -> None:
            ctx.check()
            if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
                raise StepTimedOut

        with overflow_path.open("wb") as overflow:
            searcher = Searcher(query, overflow)
            for path in files:
                if overflow.tell() > OVERFLOW_LIMIT:
                    searcher.overflow = None
                try:
                    searcher.search_file(path, check)
                except OSError as exc:  # a rotated-away or unreadable file must not hide the others' matches
                    ctx.emit(f"skipped {path}: {exc}")
        outputs = searcher.summary()
        seconds = time.perf_counter() - started
        outputs["seconds"] = round(seconds, 3)
        outputs["since"] = query.since.isoformat() if query.since else None
        outputs["until"] = query.until.isoformat() if query.until else None
        kept = within(outputs["matches"], 32 * 1024)
        outputs["truncated"] = outputs["truncated"] or len(kept) < len(outputs["matches"])
        outputs["matches"] = kept
        if outputs["truncated"]:
            outputs["files"] = {"matches": ref(overflow_path)}
        else:
            overflow_path.unlink(missing_ok=True)
        outputs["findings"] = _findings(outputs, overflow_path if outputs["truncated"] else None)
        ctx.emit(f"{outputs['matched']} matches in {outputs['lines_scanned']} lines of {len(files)} file(s) "
                 f"({outputs['bytes_scanned'] / 1e6:.1f} MB in {seconds:.2f}s)")
        for group in outputs["groups"][:5]:
            ctx.emit("  " + ", ".join(f"{k}={v}" for k, v in group.items()))
        if inputs.fail_if_none and not outputs["matched"]:
            raise StepFailed("no log line matches", outputs)
        return outputs
