from __future__ import annotations

import base64
import difflib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from server import saferegex
from server.redaction import is_secret_key
from server.runbooks.toolkit_kinds import HttpReplayInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import netguard
from workers.toolkit.artifacts import artifact, ref, within
from workers.toolkit.findings import finding

# Never replayed: they describe the original connection, not the request.
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade", "te",
               "accept-encoding", "proxy-connection"}
SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token", "x-csrf-token"}
DIFFS_KEPT = 50
BODY_DIFF_LINES = 40


def _headers(raw: Any) -> list[tuple[str, str]]:
    if isinstance(raw, dict):
        return [(str(k), str(v)) for k, v in raw.items()]
    if isinstance(raw, list):  # HAR's [{name, value}] or [[name, value]]
        return [(str(h["name"]), str(h["value"])) if isinstance(h, dict) else (str(h[0]), str(h[1])) for h in raw]
    return []


def load_capture(path: Path) -> list[dict[str, Any]]:
    """Requests as {method, path, headers, body, status, response_body} from JSONL or a HAR file."""
    text = path.read_bytes()
    stripped = text.lstrip()
    if path.suffix.lower() == ".har" or (stripped.startswith(b"{") and b'"log"' in stripped[:200]):
        entries = orjson.loads(text)["log"]["entries"]
        out = []
        for entry in entries:
            request, response = entry["request"], entry.get("response") or {}
            url = urlsplit(request["url"])
            content = response.get("content") or {}
            body = content.get("text")
            if body is not None and content.get("encoding") == "base64":
                body = base64.b64decode(body).decode(errors="replace")
            out.append({"method": request["method"], "path": url.path + (f"?{url.query}" if url.query else ""),
                        "headers": _headers(request.get("headers")),
                        "body": (request.get("postData") or {}).get("text"),
                        "status": response.get("status"), "response_body": body})
        return out
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise StepFailed(f"{path}:{number} is not JSON") from None
        response = item.get("response") or {}
        out.append({"method": item.get("method", "GET").upper(), "path": item.get("path") or item.get("url", "/"),
                    "headers": _headers(item.get("headers")), "body": item.get("body"),
                    "status": item.get("status", response.get("status")),
                    "response_body": item.get("response_body", response.get("body"))})
    return out


def clean_headers(headers: list[tuple[str, str]], allow: set[str]) -> tuple[list[tuple[str, str]], set[str]]:
    kept, stripped = [], set()
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_HEADERS or lower.startswith(":"):
            continue
        if (lower in SECRET_HEADERS or is_secret_key(lower)) and lower not in allow:
            stripped.add(lower)
            continue
        kept.append((name, value))
    return kept, stripped


def _parse(body: Any) -> Any:
    if isinstance(body, dict | list):
        return body
    if isinstance(body, str | bytes) and body:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
    return None


def json_diff(old: Any, new: Any, ignore: set[str], path: str = "") -> list[dict[str, Any]]:
    """Paths whose values differ, dotted like ignore_fields (`items.0.price`)."""
    if path in ignore:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                out += [] if sub in ignore else [{"path": sub, "captured": old[key], "replayed": "<missing>"}]
            elif key not in old:
                out += [] if sub in ignore else [{"path": sub, "captured": "<missing>", "replayed": new[key]}]
            else:
                out += json_diff(old[key], new[key], ignore, sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True))
                for d in json_diff(a, b, ignore, f"{path}.{i}" if path else str(i))]
    return [] if old == new else [{"path": path or "$", "captured": old, "replayed": new}]


def body_diff(captured: Any, replayed: str, ignore: set[str]) -> list[Any]:
    old, new = _parse(captured), _parse(replayed)
    if old is not None and new is not None:
        return json_diff(old, new, ignore)
    old_text = captured if isinstance(captured, str) else ("" if captured is None else orjson.dumps(captured).decode())
    if old_text == replayed:
        return []
    return list(difflib.unified_diff(old_text.splitlines(), replayed.splitlines(), "captured", "replayed",
                                     lineterm=""))[:BODY_DIFF_LINES]


def _diff_line(d: dict[str, Any]) -> str:
    what = d["error"] if d.get("error") else f"captured {d.get('captured_status')}, replayed {d.get('replayed_status')}"
    return f"#{d.get('index', '?')} {d.get('method', '')} {d.get('path', '')}: {what}" + (
        " (body differs)" if d.get("body") else "")


@register("http.replay")
class HttpReplay(Step[HttpReplayInputs]):
    def run(self, inputs: HttpReplayInputs, ctx: StepContext) -> dict[str, Any]:
        try:
            requests = load_capture(Path(inputs.capture))
        except (OSError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise StepFailed(f"cannot read the capture {inputs.capture}: {type(exc).__name__}: {exc}") from None
        if inputs.match:
            try:
                wanted = saferegex.compile(inputs.match)
            except saferegex.InvalidPattern as exc:
                raise StepFailed(str(exc)) from None
            requests = [r for r in requests if wanted.search(f"{r['method']} {r['path']}")]
        requests = requests[:inputs.max_requests]
        allow = {h.lower() for h in inputs.allow_headers}
        ignore = set(inputs.ignore_fields)
        base = inputs.base_url.rstrip("/")
        stripped_all: set[str] = set()
        diffs: list[dict[str, Any]] = []
        matched = errors = 0
        report = []
        with httpx.Client(timeout=inputs.timeout.total_seconds(), follow_redirects=False,
                          transport=netguard.transport()) as client:
            for index, request in enumerate(requests):
                ctx.check()
                headers, stripped = clean_headers(request["headers"], allow)
                stripped_all |= stripped
                body = request["body"]
                content = orjson.dumps(body) if isinstance(body, dict | list) else body
                if isinstance(body, dict | list) and not any(k.lower() == "content-type" for k, _ in headers):
                    headers.append(("content-type", "application/json"))
                entry: dict[str, Any] = {"index": index, "method": request["method"], "path": request["path"],
                                         "captured_status": request["status"]}
                try:
                    response = client.request(request["method"], base + request["path"], headers=headers,
                                              content=content)
                except httpx.HTTPError as exc:
                    errors += 1
                    diffs.append({**entry, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                entry["replayed_status"] = response.status_code
                differences: dict[str, Any] = {}
                if "status" in inputs.compare and request["status"] is not None \
                        and int(request["status"]) != response.status_code:
                    differences["status"] = True
                if "body" in inputs.compare and request["response_body"] is not None:
                    changed = body_diff(request["response_body"], response.text, ignore)
                    if changed:
                        differences["body"] = changed
                report.append({**entry, **differences})
                if differences:
                    diffs.append({**entry, **differences})
                    ctx.emit(f"#{index} {request['method']} {request['path']}: captured {request['status']}, "
                             f"replayed {response.status_code}" + (" (body differs)" if "body" in differences else ""))
                else:
                    matched += 1
        path = artifact(ctx, "replay.json")
        path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        outputs = {"replayed": len(requests), "matched": matched, "differed": len(diffs) - errors, "errors": errors,
                   "diffs": within(diffs[:DIFFS_KEPT], 32 * 1024), "stripped_headers": sorted(stripped_all),
                   "files": {"report": ref(path)}}
        outputs["findings"] = [finding("warning", _diff_line(d), artifact=path) for d in diffs[:5]] or [
            finding("info", f"all {len(requests)} replayed requests match the capture", artifact=path)]
        if inputs.fail_on_diff and diffs:
            raise StepFailed(f"{len(diffs)} of {len(requests)} replayed requests differ from the capture", outputs)
        return outputs
