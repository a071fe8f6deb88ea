"""Keep step outputs small in the database: anything over the cap goes to a file, the row keeps a head."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

HEAD_CHARS = 4096


def to_json(value: Any) -> Any:
    """Outputs as plain JSON types (what the database and later steps see)."""
    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


def artifact_path(directory: Path, run_id: int, name: str) -> Path:
    return directory / f"run-{run_id}" / name


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def cap_outputs(outputs: dict[str, Any], *, run_id: int, step_id: str, attempt: int, cap: int,
                directory: Path) -> dict[str, Any]:
    """Move the largest string outputs to artifact files until the rest fits in cap bytes."""
    outputs = to_json(outputs)
    if len(orjson.dumps(outputs)) <= cap:
        return outputs
    refs: dict[str, Any] = {}
    for field in sorted((k for k, v in outputs.items() if isinstance(v, str)), key=lambda k: -len(outputs[k])):
        if len(orjson.dumps(outputs)) <= cap:
            break
        name = f"{_safe(step_id)}.{attempt}.{_safe(field)}.txt"
        data = outputs[field].encode()
        path = artifact_path(directory, run_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        outputs[field] = outputs[field][:HEAD_CHARS]
        refs[field] = {"artifact": name, "size": len(data), "head_chars": HEAD_CHARS}
    if len(orjson.dumps(outputs)) > cap:
        # Still too big (a huge JSON body, many headers): keep the whole thing as one JSON artifact.
        name = f"{_safe(step_id)}.{attempt}.outputs.json"
        data = orjson.dumps(outputs)
        path = artifact_path(directory, run_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        outputs = {"truncated": True}
        refs["*"] = {"artifact": name, "size": len(data)}
    outputs["artifacts"] = refs
    return outputs
