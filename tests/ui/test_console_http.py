"""The console over real HTTP, without a browser: sessions, CSRF, roles, headers, assets, /docs, OpenAPI."""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from server.auth.models import Role
from server.db import make_engine
from server.runs import artifact_store
from tests.support import wait_for


@contextmanager
def signed_in(url: str, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        page = client.get("/ui/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        response = client.post("/ui/sign-in", data={"csrf": csrf, "token": token})
        assert response.status_code == 303, response.text
        yield client


def csrf_of(client: httpx.Client, path: str = "/ui") -> str:
    """The CSRF value of the page's last form (the sign-out form in the header comes first)."""
    return re.findall(r'name="csrf" value="([^"]*)"', client.get(path).text)[-1]


def test_root_redirects_to_the_console_and_pages_need_a_session(ui_url):
    with httpx.Client(base_url=ui_url, timeout=30) as anon:
        assert anon.get("/").headers["location"] == "/ui"
        response = anon.get("/ui/runs")
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/sign-in")
        assert anon.get("/api/v1/runs").status_code == 401  # the API keeps its JSON errors
        assert anon.get("/api/v1/runs").json()["error"]["code"] == "unauthorized"


def test_every_page_renders_for_an_admin_with_security_headers(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.admin)) as client:
        for path in ["/ui", "/ui/runbooks", "/ui/runbooks/gated-fix", "/ui/runs", "/ui/flags", "/ui/loglevels",
                     "/ui/incidents", "/ui/audit", "/ui/tokens"]:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:2000])
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["referrer-policy"] == "same-origin"
            assert "<script>" not in response.text  # no inline script anywhere


def test_session_cookie_is_httponly_and_strict(ui_url, ui_token):
    with httpx.Client(base_url=ui_url, timeout=30) as client:
        _check_cookie(client, ui_token)


def _check_cookie(client, ui_token):
    page = client.get("/ui/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    response = client.post("/ui/sign-in", data={"csrf": csrf, "token": ui_token(Role.viewer)})
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "runbookd_session=" in v)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie


def test_a_bad_token_does_not_sign_in(ui_url):
    with httpx.Client(base_url=ui_url, timeout=30) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/sign-in").text).group(1)
        response = client.post("/ui/sign-in", data={"csrf": csrf, "token": "rbd_nope"})
        assert response.status_code == 401 and "invalid API token" in response.text
        assert "runbookd_session" not in client.cookies


def test_a_client_role_token_cannot_sign_in(ui_url, ui_token):
    with httpx.Client(base_url=ui_url, timeout=30) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/sign-in").text).group(1)
        response = client.post("/ui/sign-in", data={"csrf": csrf, "token": ui_token(Role.client)})
        assert response.status_code == 401 and "may only evaluate flags" in response.text


def test_sign_in_without_its_csrf_value_is_refused(ui_url, ui_token):
    with httpx.Client(base_url=ui_url, timeout=30) as client:
        client.get("/ui/sign-in")
        response = client.post("/ui/sign-in", data={"csrf": "forged", "token": ui_token(Role.admin)})
        assert response.status_code == 403 and "CSRF" in response.text


def test_post_without_or_with_a_wrong_csrf_token_is_refused(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.operator)) as client:
        data = {"title": "csrf probe", "severity": "sev3"}
        assert client.post("/ui/incidents", data=data).status_code == 403
        assert client.post("/ui/incidents", data={**data, "csrf": "0" * 64}).status_code == 403
        good = client.post("/ui/incidents", data={**data, "csrf": csrf_of(client)})
        assert good.status_code == 303


def test_cross_site_origin_is_refused_even_with_the_token(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.operator)) as client:
        csrf = csrf_of(client)
        response = client.post("/ui/incidents", data={"title": "x", "csrf": csrf},
                               headers={"Origin": "https://evil.example"})
        assert response.status_code == 403 and "cross-site" in response.text


def test_viewer_sees_no_write_buttons_and_forged_posts_are_refused(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.viewer)) as viewer:
        for path in ["/ui/runbooks/gated-fix", "/ui/flags", "/ui/loglevels", "/ui/incidents"]:
            body = viewer.get(path).text
            forms = re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', body)
            assert forms == ["/ui/sign-out"], (path, forms)
        csrf = csrf_of(viewer)  # a real session's own CSRF token: only the role stops these
        for path, data in [("/ui/runbooks/gated-fix/run", {}), ("/ui/incidents", {"title": "x"}),
                           ("/ui/loglevels", {"service": "a", "logger": "ROOT", "level": "DEBUG"}),
                           ("/ui/tokens", {"name": "sneaky", "role": "admin"})]:
            response = viewer.post(path, data={**data, "csrf": csrf})
            assert response.status_code == 403, (path, response.status_code)
            assert "role" in response.text
        assert viewer.get("/ui/tokens").status_code == 403


def test_operator_cannot_use_admin_pages(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.operator)) as client:
        assert client.get("/ui/tokens").status_code == 403
        assert "/ui/tokens" not in client.get("/ui").text
        assert client.post("/ui/audit/verify", data={"csrf": csrf_of(client)}).status_code == 403


def test_revoking_the_token_ends_the_session_at_once(ui_url, ui_token):
    admin = ui_token(Role.admin)
    name = "revoke-me-" + ui_token.__name__
    victim = ui_token(Role.operator, name)
    with signed_in(ui_url, victim) as session, httpx.Client(base_url=ui_url, timeout=30) as api:
        assert session.get("/ui/runs").status_code == 200
        assert api.delete(f"/api/v1/tokens/{name}", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        response = session.get("/ui/runs")
        assert response.status_code == 303 and "revoked" in httpx.URL(response.headers["location"]).params["note"]


def test_sign_out_ends_the_session(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        response = client.post("/ui/sign-out", data={"csrf": csrf_of(client)})
        assert response.status_code == 303
        assert client.get("/ui/runs").status_code == 303


def test_run_form_422_is_shown_beside_the_field_and_secrets_never_come_back(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.operator)) as client:
        csrf = csrf_of(client, "/ui/runbooks/http-health-triage")
        response = client.post("/ui/runbooks/http-health-triage/run",
                               data={"csrf": csrf, "p.base_url": "not-a-url", "p.max_latency_ms": "0",
                                     "p.webhook_url": "https://hooks.example/SECRET-VALUE"})
        assert response.status_code == 422
        assert re.search(r'id="err-base_url">[^<]*does not match', response.text)
        assert re.search(r'id="err-max_latency_ms">[^<]*below the minimum', response.text)
        assert "SECRET-VALUE" not in response.text


def test_static_assets_have_content_hashes_and_long_cache(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        page = client.get("/ui").text
        css = re.search(r'href="(/ui/static/console\.[0-9a-f]{12}\.css)"', page).group(1)
        js = re.search(r'src="(/ui/static/console\.[0-9a-f]{12}\.js)"', page).group(1)
        for path in (css, js):
            response = client.get(path)
            assert response.status_code == 200
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert client.get(path, headers={"If-None-Match": response.headers["etag"]}).status_code == 304
        assert client.get("/ui/static/console.css").status_code == 404  # only hashed names are served


def test_openapi_declares_security_schemes_and_docs_use_no_cdn(ui_url, ui_token):
    with httpx.Client(base_url=ui_url, timeout=30) as client:
        schema = client.get("/openapi.json").json()
        schemes = schema["components"]["securitySchemes"]
        assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
        assert schemes["apiKey"]["name"] == "X-API-Key" and schemes["apiKey"]["in"] == "header"
        assert "X-Slack-Signature" in schema["info"]["description"]
        assert {"bearer": []} in schema["paths"]["/api/v1/runs"]["get"]["security"]
        assert "security" not in schema["paths"]["/healthz"]["get"]
        assert "security" not in schema["paths"]["/chat/slack/commands"]["post"]  # signed, not tokens
        for path in ("/docs", "/redoc"):
            html = client.get(path).text
            assert "cdn" not in html.lower() and "fonts.googleapis" not in html
            for asset in re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', html):
                assert client.get(asset).status_code == 200
        assert not any(p.startswith("/ui") for p in schema["paths"])


@pytest.mark.parametrize("path", ["/ui/runs/999999", "/ui/flags/no-such-flag", "/ui/incidents/INC-99999"])
def test_missing_things_are_html_404s(ui_url, ui_token, path):
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        response = client.get(path)
        assert response.status_code == 404 and "text/html" in response.headers["content-type"]


def test_run_page_shows_picture_artifacts_inline_and_streams_events_with_the_cookie(ui_url, ui_token, ui_settings,
                                                                                      ui_worker):
    operator = ui_token(Role.operator)
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {operator}"}, timeout=30) as api:
        run = api.post("/api/v1/runs", json={"runbook": "gated-fix", "params": {"api_key": "k-SECRET"}}).json()
    engine = make_engine(ui_settings.effective_database_url)  # artifacts live in the database
    try:
        artifact_store.store_all(engine, run_id=run["id"], max_run_bytes=10**6, items=[
            ("flame.svg", None, "image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
            ("top.txt", None, "text/plain", b"hot functions")])
    finally:
        engine.dispose()
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        page = client.get(f"/ui/runs/{run['id']}").text
        assert f'<img src="/ui/runs/{run["id"]}/artifacts/flame.svg"' in page
        assert f'href="/ui/runs/{run["id"]}/artifacts/top.txt" download' in page
        assert "k-SECRET" not in page
        assert client.get(f"/ui/runs/{run['id']}/artifacts/flame.svg").status_code == 200
        assert client.get(f"/ui/runs/{run['id']}/artifacts/..%2Fx").status_code == 404
        with client.stream("GET", f"/ui/runs/{run['id']}/events") as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            first = next(line for line in stream.iter_lines() if line.startswith("event:"))
            assert first == "event: run.queued"
    with httpx.Client(base_url=ui_url, timeout=30) as anon:  # no cookie, no stream
        assert anon.get(f"/ui/runs/{run['id']}/events").status_code == 401


def test_phase_less_steps_are_one_group_without_a_second_steps_heading(ui_url, ui_token):
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        page = client.get("/ui/runbooks/plain-steps").text
        steps = page[page.index('id="h-steps"'):page.index('id="h-run"')]
        assert "<h3" not in steps, steps  # no heading "steps" under the "Steps" heading
        assert steps.count("<ol") == 1 and "first" in steps and "second" in steps
        phased = client.get("/ui/runbooks/gated-fix").text
        assert {"observe", "fix", "verify"} <= set(re.findall(r"<h3>([^<]+)</h3>", phased))


def test_a_waiting_steps_inputs_are_shown_beside_its_approve_and_reject_buttons(ui_url, ui_token, ui_worker):
    operator = ui_token(Role.operator)
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {operator}"}, timeout=30) as api:
        run = api.post("/api/v1/runs", json={"runbook": "gated-fix", "params": {"note": "n"}}).json()
        wait_for(lambda: api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "waiting_approval", 60,
                 "the run to reach its gate")
    with signed_in(ui_url, operator) as client:
        page = client.get(f"/ui/runs/{run['id']}").text
        row = re.search(r'<tr class="approval-row" id="approval-fix">(.*?)</tr>', page, re.S)
        assert row, page
        block = row.group(1)
        assert "approved by a human" in block  # the step's rendered input, not inside a collapsed <details>
        assert "<details" not in block
        assert ">Approve</button>" in block and ">Reject</button>" in block
        assert f'formaction="/ui/runs/{run["id"]}/steps/fix/reject"' in block
        response = client.post(f"/ui/runs/{run['id']}/steps/fix/reject",
                               data={"csrf": csrf_of(client, f"/ui/runs/{run['id']}"), "reason": "not today"})
        assert response.status_code == 303
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {operator}"}, timeout=30) as api:
        step = next(s for s in api.get(f"/api/v1/runs/{run['id']}").json()["steps"] if s["step_id"] == "fix")
        assert step["approval"] == "rejected" and step["approval_reason"] == "not today"


def test_incident_timeline_shows_log_level_changes_in_words(ui_url, ui_token):
    operator = ui_token(Role.operator)
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {operator}"}, timeout=30) as api:
        incident = api.post("/api/v1/incidents", json={"title": "log levels"}).json()["id"]
        created = api.post("/api/v1/loglevels", json={"service": "checkout", "logger": "payments.db", "level": "DEBUG",
                                                       "for": "15m", "reason": "see the slow queries",
                                                       "incident_id": incident})
        assert created.status_code == 201, created.text
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        page = client.get(f"/ui/incidents/{incident}").text
        timeline = page[page.index('<ol class="timeline">'):page.index("</ol>", page.index('<ol class="timeline">'))]
        assert "<strong>loglevel.raise</strong>" not in timeline
        row = re.search(r'<dl class="kv loglevel-row">(.*?)</dl>', timeline, re.S).group(1)
        words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row))
        for expected in ("Service checkout", "Logger payments.db", "Level DEBUG", "Who ", "Why see the slow queries"):
            assert expected in words, words
        assert re.search(r"Until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", words), words


def test_incident_report_is_rendered_as_html_with_the_source_html_escaped(ui_url, ui_token):
    operator = ui_token(Role.operator)
    summary = ("<script>alert(1)</script> <img src=x onerror=alert(2)> "
               "[bad](javascript:alert(3)) [good](https://status.example/x)")
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {operator}"}, timeout=30) as api:
        incident = api.post("/api/v1/incidents", json={"title": "words", "summary": summary}).json()["id"]
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        page = client.get(f"/ui/incidents/{incident}").text
        report = page[page.index('<article class="report"'):page.index("</article>")]
        assert "<h1>" in report and "<table>" in report  # rendered, not the Markdown source in a <pre>
        assert "<script>" not in report and "<img" not in report and "&lt;script&gt;" in report
        assert "javascript:" not in re.sub(r"&[a-z]+;", "", " ".join(re.findall(r'href="([^"]*)"', report)))
        assert 'href="https://status.example/x" rel="noopener noreferrer nofollow"' in report
        download = client.get(f"/ui/incidents/{incident}/report.md")
        assert download.status_code == 200 and download.text.startswith(f"# {incident}: words")



def test_incident_page_and_undo_say_outcomes_and_runbookd_in_words(ui_url, ui_token):
    """The undo's dry run and its result say each flag's fate in words ("would be restored to version 1 on
    undo", then "restored to version 1"), the same words as the report's "now" column; runbookd's own loggers
    are "runbookd (this server)" on the incident page, never `_runbookd`."""
    admin = ui_token(Role.admin)
    changed, created = (f"undo-words-{uuid.uuid4().hex[:6]}" for _ in range(2))
    logger = f"runbookd.undo-{uuid.uuid4().hex[:6]}"
    body = {"type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "off"}
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as api:
        incident = api.post("/api/v1/incidents", json={"title": "undo words"}).json()["id"]
        assert api.post("/api/v1/flags", json={"key": changed, **body}).status_code == 201
        assert api.patch(f"/api/v1/flags/{changed}", json={"default_variant": "on", "incident_id": incident},
                         ).status_code == 200
        assert api.post("/api/v1/flags", json={"key": created, **body, "incident_id": incident}).status_code == 201
        assert api.post(f"/debug/loggers/{logger}", json={"configuredLevel": "DEBUG", "for": "15m",
                                                          "incident_id": incident}).status_code == 204
    with signed_in(ui_url, admin) as client:
        page = client.get(f"/ui/incidents/{incident}").text
        # the timeline's "details" disclosures show the recorded JSON as it is, the internal name included
        assert "_runbookd" not in re.sub(r"<details>.*?</details>", "", page, flags=re.S)
        assert "<dt>Service</dt><dd><code>runbookd (this server)</code></dd>" in page
        report = page[page.index('<article class="report"'):page.index("</article>")]
        assert "would be restored to version 1 on undo" in report and "runbookd (this server)" in report
        csrf = csrf_of(client, f"/ui/incidents/{incident}")
        preview = client.post(f"/ui/incidents/{incident}/undo/preview", data={"csrf": csrf}).text
        preview = preview[preview.index('id="undo-preview"'):preview.index("</section>")]
        assert "_runbookd" not in preview, preview
        assert f">{changed}</a></td><td>would be restored to version 1 on undo</td>" in preview, preview
        assert f">{created}</a></td><td>would be deleted on undo (the incident created it)</td>" in preview, preview
        assert f"<td>runbookd (this server) <code>{logger}</code> at DEBUG</td>" in preview, preview
        done = client.post(f"/ui/incidents/{incident}/undo", data={"csrf": csrf}).text
        done = done[done.index('id="undo-result"'):done.index("</section>")]
        assert f">{changed}</a></td><td>restored to version 1</td>" in done, done
        assert f">{created}</a></td><td>deleted (the incident created it)</td>" in done, done
        # The new-override form does not suggest the internal name, which it refuses (422).
        assert "_runbookd" not in client.get("/ui/loglevels").text

def test_pages_leave_no_reference_cycle_holding_their_data(ui_url, ui_token):
    """A page's whole context (the flags list: every flag and its spec) must be freed when the response is sent.
    Macros imported `with context` tied Jinja's render context into a reference cycle, so every page's data
    waited for a full garbage collection: one every few flags pages, pausing every request (bench/ui_pages.py).
    The api runs in this process (tests/support.py serve), so its garbage is visible here."""
    import gc

    with signed_in(ui_url, ui_token(Role.operator)) as client:
        client.get("/ui/flags")  # warm: templates compiled, caches filled
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for path in ["/ui/flags", "/ui", "/ui/runbooks/gated-fix", "/ui/loglevels", "/ui/incidents"]:
                assert client.get(path).status_code == 200
            gc.collect()
            leaked = [o for o in gc.garbage if type(o).__module__.startswith(("jinja2", "server."))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert not leaked, {type(o).__qualname__ for o in leaked}
    assert gc.get_freeze_count() > 0  # server/heap.py: the start-up heap is out of every full collection


def _audit_changes(page: str) -> dict[str, str]:
    """The audit page's Change cells by action, each reduced to its before/after table."""
    out = {}
    for row in re.findall(r"<tr><td data-label=\"event\">.*?</td></tr>\n", page, re.S):
        action = re.search(r"<code>([a-z_.]+)</code>", row).group(1)
        table = re.search(r"<details><summary>(.*?)</summary>(.*?)</details>", row, re.S)
        out[action] = table.group(1) + "\n" + table.group(2) if table else ""
    return out


def test_audit_page_shows_a_creation_whole_and_an_update_leaf_by_leaf(ui_url, ui_token):
    """A created flag's event is one row holding the whole new value (not ~20 rows that each say "nothing" on
    one side); an update lists only the leaves that changed, before and after; values are escaped once."""
    admin = ui_token(Role.admin)
    key = f"audit-diff-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as api:
        created = api.post("/api/v1/flags", json={
            "key": key, "type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "off",
            "description": "<b>bold</b> & \"quoted\"", "tags": ["audit"],
            "environments": {"production": {"enabled": True, "rules": [
                {"conditions": [{"attribute": "plan", "operator": "in", "value": ["beta"]}], "variant": "on"}]}}})
        assert created.status_code == 201, created.text
        changed = api.patch(f"/api/v1/flags/{key}", json={"environments": {"production": {"enabled": False}}},
                            headers={"If-Match": created.headers.get("etag", "*")})
        assert changed.status_code == 200, changed.text
    with signed_in(ui_url, ui_token(Role.viewer)) as client:
        changes = _audit_changes(client.get("/ui/audit", params={"target_id": key}).text)
    create, update = changes["flag.create"], changes["flag.update"]
    assert create.startswith("before / after (created)\n"), create
    assert create.count("<tr>") == 2, create  # the header row and one row: the whole value
    assert '<th scope="col">Path</th><th scope="col">Before</th><th scope="col">After</th>' in create
    assert '<td class="del" data-label="before"><span class="muted">(none)</span></td>' in create
    whole = re.search(r'<td class="add" data-label="after"><pre class="whole">(.*?)</pre></td>', create, re.S)[1]
    assert "<b>" not in whole and "&amp;amp;" not in whole  # escaped, once
    value = json.loads(html.unescape(whole))
    assert value["spec"]["description"] == '<b>bold</b> & "quoted"' and value["version"] == 1
    assert value["spec"]["environments"]["production"]["rules"][0]["conditions"][0]["attribute"] == "plan"
    assert whole.count("\n") > 10  # pretty-printed, one leaf a line
    rows = re.findall(r'<tr><td><code>([^<]*)</code></td><td class="del" data-label="before"><code>([^<]*)</code>'
                      r'</td><td class="add" data-label="after"><code>([^<]*)</code></td></tr>', update)
    # Only what the user changed, and the version: the create's recorded value has the update's shape.
    assert rows == [("/spec/environments/production/enabled", "true", "false"), ("/version", "1", "2")], update
    assert update.startswith("before / after (2)\n"), update
