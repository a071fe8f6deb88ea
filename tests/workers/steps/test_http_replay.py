"""http.replay of JSONL and HAR captures against a real HTTP server on loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from server.runbooks.toolkit_kinds import HttpReplayInputs
from tests.support import serve
from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.base import StepFailed
from workers.steps.http_replay import HttpReplay, json_diff

SEEN: list[dict] = []


def target_app() -> FastAPI:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    def order(order_id: int, request: Request):
        SEEN.append({"path": request.url.path, "headers": dict(request.headers)})
        return {"id": order_id, "total": 30 if order_id == 2 else 10, "served_at": time.time()}

    @app.post("/checkout")
    async def checkout(request: Request):
        body = await request.json()
        SEEN.append({"path": "/checkout", "headers": dict(request.headers), "body": body})
        if not body.get("items"):
            return JSONResponse({"error": "EmptyCart"}, status_code=500)
        return {"ok": True}

    return app


@pytest.fixture(scope="module")
def base_url():
    with serve(target_app()) as url:
        yield url


def write_capture(path: Path) -> Path:
    rows = [
        {"method": "GET", "path": "/orders/1", "headers": {"Authorization": "Bearer sk-live-123", "X-Trace": "t1"},
         "status": 200, "response_body": {"id": 1, "total": 10, "served_at": 1.0}},
        {"method": "GET", "path": "/orders/2", "headers": {"Cookie": "session=abc", "X-Api-Key": "k"},
         "status": 200, "response_body": {"id": 2, "total": 20, "served_at": 1.0}},
        {"method": "POST", "path": "/checkout", "headers": {"Content-Type": "application/json"},
         "body": {"items": []}, "status": 500, "response_body": {"error": "EmptyCart"}},
        {"method": "POST", "path": "/checkout", "headers": {"Host": "prod.example", "Content-Length": "99"},
         "body": {"items": [1]}, "response": {"status": 500, "body": "{\"error\": \"EmptyCart\"}"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replay_strips_secrets_and_reports_each_difference(base_url, tmp_path):
    SEEN.clear()
    capture = write_capture(tmp_path / "capture.jsonl")
    outputs = HttpReplay().run(HttpReplayInputs(capture=str(capture), base_url=base_url,
                                                ignore_fields=["served_at"]), make_ctx(tmp_path))
    assert (outputs["replayed"], outputs["matched"], outputs["differed"], outputs["errors"]) == (4, 2, 2, 0)
    assert len(outputs["findings"]) == 2 and {f["severity"] for f in outputs["findings"]} == {"warning"}
    assert all(f["evidence"]["artifact"].endswith("replay.json") and "captured" in f["message"]
               for f in outputs["findings"])
    assert outputs["stripped_headers"] == ["authorization", "cookie", "x-api-key"]
    sent = [s["headers"] for s in SEEN]
    assert not any(k in h for h in sent for k in ("authorization", "cookie", "x-api-key"))
    assert sent[0]["x-trace"] == "t1" and sent[3]["host"].startswith("127.0.0.1")
    by_path = {(d["method"], d["path"], d["captured_status"]): d for d in outputs["diffs"]}
    order = by_path[("GET", "/orders/2", 200)]
    assert "status" not in order and order["body"] == [{"path": "total", "captured": 20, "replayed": 30}]
    fixed = by_path[("POST", "/checkout", 500)]
    assert fixed["status"] is True and fixed["replayed_status"] == 200
    assert Path(outputs["files"]["report"]["path"]).exists()
    assert "sk-live-123" not in json.dumps(outputs)


def test_allowed_headers_are_sent_and_fail_on_diff(base_url, tmp_path):
    SEEN.clear()
    capture = write_capture(tmp_path / "capture.jsonl")
    with pytest.raises(StepFailed, match="2 of 2 replayed requests differ"):
        HttpReplay().run(HttpReplayInputs(capture=str(capture), base_url=base_url, allow_headers=["Authorization"],
                                          match="^GET ", fail_on_diff=True), make_ctx(tmp_path))
    assert SEEN[0]["headers"]["authorization"] == "Bearer sk-live-123"


def test_har_capture(base_url, tmp_path):
    har = {"log": {"entries": [{
        "request": {"method": "GET", "url": "https://prod.example/orders/1?debug=1",
                    "headers": [{"name": "Authorization", "value": "Bearer x"}, {"name": ":authority", "value": "p"}]},
        "response": {"status": 200, "content": {"text": json.dumps({"id": 1, "total": 10, "served_at": 0})}}}]}}
    (tmp_path / "session.har").write_text(json.dumps(har))
    outputs = HttpReplay().run(HttpReplayInputs(capture=str(tmp_path / "session.har"), base_url=base_url,
                                                ignore_fields=["served_at"]), make_ctx(tmp_path))
    assert (outputs["replayed"], outputs["matched"]) == (1, 1)
    assert outputs["stripped_headers"] == ["authorization"]


def test_unreachable_target_is_an_error_not_a_crash(tmp_path):
    capture = write_capture(tmp_path / "capture.jsonl")
    outputs = HttpReplay().run(HttpReplayInputs(capture=str(capture), base_url="http://127.0.0.1:9", timeout="1s",
                                                max_requests=1), make_ctx(tmp_path))
    assert outputs["errors"] == 1 and "ConnectError" in outputs["diffs"][0]["error"]


def test_text_bodies_get_a_unified_diff():
    from workers.steps.http_replay import body_diff

    assert body_diff("line one\nline two", "line one\nline 2", set())[-2:] == ["-line two", "+line 2"]
    assert json_diff({"a": [1, 2]}, {"a": [1, 3]}, set()) == [{"path": "a.1", "captured": 2, "replayed": 3}]
