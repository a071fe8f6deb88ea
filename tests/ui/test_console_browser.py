"""The console in a real headless chromium against a live api with a real worker and beat.

Each test leaves screenshots in the folder printed at the start (not committed); look at them.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from server.auth.models import Role
from tests.support import wait_for
from tests.ui.conftest import shot, sign_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def admin(ui_url, ui_token):
    token = ui_token(Role.admin)
    with httpx.Client(base_url=ui_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield token, client


def landed(page, pattern: str) -> None:
    """Wait for the navigation a click started; fail with what the page said if it went elsewhere."""
    page.wait_for_load_state()
    assert re.search(pattern, page.url), (page.url, page.locator("main").inner_text()[:2000])


def make_flag(client: httpx.Client, key: str) -> None:
    response = client.post("/api/v1/flags", json={
        "key": key, "type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "on",
        "description": f"console test flag {key}", "tags": ["console-test"],
        "environments": {"production": {"enabled": True, "rules": [
            {"name": "beta users", "conditions": [{"attribute": "plan", "operator": "in", "value": ["beta"]}],
             "variant": "on"}]}},
        "reason": "console test"})
    assert response.status_code == 201, response.text


def test_start_a_shipped_runbook_from_its_form_and_watch_steps_turn_green(browser, ui_url, ui_worker, admin):
    page = browser.page(ui_url)
    sign_in(page, admin[0])
    shot(page, browser.shots, "overview")
    page.goto("/ui/runbooks")
    shot(page, browser.shots, "runbooks")
    page.get_by_role("link", name="HTTP health and latency triage").click()
    page.get_by_label("base_url").fill("not a url")
    page.get_by_label("max_latency_ms").fill("0")
    page.get_by_role("button", name="Run http-health-triage").click()
    assert "does not match" in page.locator("#err-base_url").inner_text()  # the 422 beside its field
    assert "below the minimum" in page.locator("#err-max_latency_ms").inner_text()
    assert page.get_by_label("base_url").get_attribute("aria-invalid") == "true"
    shot(page, browser.shots, "runbook-form-422")
    page.get_by_label("base_url").fill(ui_url)
    page.get_by_label("max_latency_ms").fill("60000")  # a loaded test machine is not what this test measures
    shot(page, browser.shots, "runbook-form")
    page.get_by_role("button", name="Run http-health-triage").click()
    landed(page, r"/ui/runs/\d+$")
    page.evaluate("window.__noReload = true")  # gone if the page reloads
    page.locator("#run-live h1 .status.s-succeeded").wait_for(timeout=60_000)
    statuses = page.locator("tr[data-step] .status").all_inner_texts()
    assert statuses.count("succeeded") >= 4 and set(statuses) <= {"succeeded", "skipped"}, statuses  # no webhook
    assert page.evaluate("window.__noReload") is True  # updated live from the event stream
    shot(page, browser.shots, "run-succeeded")
    page.goto("/ui/runs")
    shot(page, browser.shots, "runs")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, browser.shots, "runs-phone")
    page.context.close()


def test_approve_a_gated_step_from_the_run_page(browser, ui_url, ui_worker, admin):
    page = browser.page(ui_url)
    sign_in(page, admin[0])
    page.goto("/ui/runbooks/gated-fix")
    page.get_by_label("api_key").fill("s3cret-never-shown")
    page.get_by_role("button", name="Run gated-fix").click()
    landed(page, r"/ui/runs/\d+$")
    approve = page.get_by_role("button", name="Approve")
    approve.wait_for(timeout=30_000)  # appears live when the run reaches the gate
    assert "s3cret-never-shown" not in page.content()
    shot(page, browser.shots, "run-waiting-approval")
    approve.click()
    page.locator("#run-live h1 .status.s-succeeded").wait_for(timeout=30_000)
    assert page.locator("#step-fix").inner_text().count("approved") >= 1
    shot(page, browser.shots, "run-approved")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, browser.shots, "run-phone")
    page.context.close()


def test_kill_switch_a_flag_for_five_seconds_and_it_comes_back(browser, ui_url, ui_worker, admin):
    key = f"ui-kill-{uuid.uuid4().hex[:6]}"
    make_flag(admin[1], key)
    page = browser.page(ui_url)
    sign_in(page, admin[0])
    page.goto("/ui/flags")
    page.locator("#kill-env").select_option("production")
    page.locator("#kill-for").fill("5s")
    page.locator("#kill-reason").fill("console test: too many errors")
    page.get_by_role("button", name=f"Kill {key}").click()
    page.wait_for_url("**/ui/flags?note=*")
    assert page.locator(f"#flag-{key} .onoff[data-env=production]").inner_text() == "off"
    assert "back in" in page.locator(f"#flag-{key}").inner_text()
    shot(page, browser.shots, "flags")
    page.goto(f"/ui/flags/{key}")
    assert page.locator("time.countdown").count() == 1
    shot(page, browser.shots, "flag-pending")

    def back_on() -> bool:
        page.goto("/ui/flags")
        return page.locator(f"#flag-{key} .onoff[data-env=production]").inner_text() == "on"

    wait_for(back_on, 30, "the flag to come back on by itself", interval=1)
    assert f"{key}" in page.content() and "back in" not in page.locator(f"#flag-{key}").inner_text()
    page.context.close()


def test_editing_one_flag_in_two_tabs_gives_the_second_save_a_conflict(browser, ui_url, ui_worker, admin):
    key = f"ui-edit-{uuid.uuid4().hex[:6]}"
    make_flag(admin[1], key)
    first = browser.page(ui_url)
    sign_in(first, admin[0])
    second = first.context.new_page()
    first.goto(f"/ui/flags/{key}")
    second.goto(f"/ui/flags/{key}")
    first.get_by_label("Description").fill("changed in the first tab")
    first.locator("#edit-reason").fill("first tab")
    first.get_by_role("button", name=re.compile("^Save")).click()
    first.wait_for_url(f"**/ui/flags/{key}?note=saved")
    second.get_by_label("Description").fill("changed in the second tab")
    second.get_by_role("button", name=re.compile("^Save")).click()
    conflict = second.locator("#conflict")
    conflict.wait_for()
    text = conflict.inner_text()
    assert "changed since you opened it" in text and "version 2" in text and "first tab" in text, text
    assert second.get_by_role("link", name="Reload the flag").is_visible()
    shot(second, browser.shots, "flag-conflict")
    second.set_viewport_size({"width": 390, "height": 844})
    shot(second, browser.shots, "flag-phone")
    flag = admin[1].get(f"/api/v1/flags/{key}").json()
    assert flag["spec"]["description"] == "changed in the first tab" and flag["version"] == 2
    first.context.close()


def test_incident_undo_after_the_dry_run_preview(browser, ui_url, ui_worker, admin):
    key = f"ui-inc-{uuid.uuid4().hex[:6]}"
    make_flag(admin[1], key)
    page = browser.page(ui_url)
    sign_in(page, admin[0])
    page.goto("/ui/incidents")
    page.get_by_label("Title").fill("Checkout is slow")
    page.get_by_role("button", name="Open incident").click()
    page.wait_for_url(re.compile(r".*/ui/incidents/INC-\d+\?note=.*"))
    incident = re.search(r"(INC-\d+)", page.url).group(1)
    shot(page, browser.shots, "incidents-new")
    # a flag change under the incident, from the flag page
    page.goto(f"/ui/flags/{key}")
    page.locator("#edit-form input[name='env.production.enabled']").uncheck()
    page.locator("#edit-reason").fill("turn it off while we look")
    page.locator("#edit-inc").select_option(incident)
    page.get_by_role("button", name=re.compile("^Save")).click()
    page.wait_for_url(f"**/ui/flags/{key}?note=saved")
    # a log level under the incident
    page.goto("/ui/loglevels")
    page.get_by_label("Service").fill("checkout")
    page.get_by_label("Logger").fill("payments")
    page.get_by_label("Level").select_option("DEBUG")
    page.get_by_label("For").fill("30m")
    page.locator("#ll-inc").select_option(incident)
    page.get_by_role("button", name="Set level").click()
    page.wait_for_url("**/ui/loglevels?note=*")
    assert "checkout/payments" in page.content()
    shot(page, browser.shots, "loglevels")
    page.goto("/ui")
    assert incident in page.locator("#h-inc + ul").inner_text() and "checkout/payments" in page.content()
    shot(page, browser.shots, "overview-busy")
    # undo: the preview first, nothing changed yet
    page.goto(f"/ui/incidents/{incident}")
    page.get_by_role("button", name="Undo what this incident changed…").click()
    preview = page.locator("#undo-preview")
    preview.wait_for()
    assert key in preview.inner_text() and "restore" in preview.inner_text()
    assert admin[1].get(f"/api/v1/flags/{key}").json()["spec"]["environments"]["production"]["enabled"] is False
    shot(page, browser.shots, "incident-undo-preview")
    page.get_by_role("button", name="Confirm: undo these changes").click()
    page.locator("#undo-result").wait_for()
    assert admin[1].get(f"/api/v1/flags/{key}").json()["spec"]["environments"]["production"]["enabled"] is True
    overrides = admin[1].get("/api/v1/loglevels", params={"service": "checkout"}).json()
    assert not [o for o in overrides if o["logger"] == "payments"]
    assert "flag.update" in page.locator("ol.timeline").inner_text()
    shot(page, browser.shots, "incident")
    page.get_by_role("button", name="Resolve").click()
    page.wait_for_url("**?note=*resolved")
    page.goto("/ui/incidents")
    shot(page, browser.shots, "incidents")
    page.goto("/ui/audit")
    page.get_by_role("button", name="Verify the chain").click()
    assert "Chain verified" in page.locator("#verify-result").inner_text()
    page.goto(f"/ui/audit?incident_id={incident}")
    shot(page, browser.shots, "audit")
    page.context.close()


def test_viewer_sees_no_write_buttons_and_the_server_refuses_anyway(browser, ui_url, ui_worker, ui_token, admin):
    key = f"ui-view-{uuid.uuid4().hex[:6]}"
    make_flag(admin[1], key)
    page = browser.page(ui_url)
    sign_in(page, ui_token(Role.viewer))
    for path in ["/ui/runbooks/gated-fix", "/ui/flags", f"/ui/flags/{key}", "/ui/loglevels", "/ui/incidents"]:
        page.goto(path)
        buttons = [b for b in page.get_by_role("button").all_inner_texts() if b != "Sign out"]
        assert buttons == [] or set(buttons) <= {"Filter"}, (path, buttons)
    shot(page, browser.shots, "flags-viewer")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    # a forged POST from the viewer's own session, with a valid CSRF token: the role refuses it
    forged = page.request.post(f"{ui_url}/ui/flags/{key}/kill",
                               form={"csrf": csrf, "environment": "production", "for": "5m", "reason": "x"})
    assert forged.status == 403 and "operator role" in forged.text()
    # without the CSRF token: refused before anything else
    assert page.request.post(f"{ui_url}/ui/incidents", form={"title": "no csrf"}).status == 403
    assert admin[1].get(f"/api/v1/flags/{key}").json()["version"] == 1
    page.context.close()


def test_a_revoked_tokens_session_is_signed_out(browser, ui_url, ui_worker, ui_token, admin):
    name = f"ui-revoked-{uuid.uuid4().hex[:6]}"
    page = browser.page(ui_url)
    sign_in(page, ui_token(Role.operator, name))
    page.goto("/ui/runs")
    assert admin[1].delete(f"/api/v1/tokens/{name}").status_code == 200
    page.goto("/ui/runs")
    page.wait_for_url("**/ui/sign-in?note=*")
    assert "revoked" in page.locator(".note").inner_text()
    shot(page, browser.shots, "signed-out")
    page.context.close()


def test_tokens_page_creates_a_token_shown_once_with_a_copy_button(browser, ui_url, ui_worker, admin):
    page = browser.page(ui_url)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, admin[0])
    page.goto("/ui/tokens")
    page.get_by_label("Name").fill(f"ui-made-{uuid.uuid4().hex[:6]}")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Create").click()
    token = page.locator("#new-token").input_value()
    assert token.startswith("rbd_")
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == token
    shot(page, browser.shots, "tokens")
    page.goto("/ui/tokens")
    assert token not in page.content()  # shown once
    page.context.close()


def test_docs_render_with_the_outside_network_unreachable(browser, ui_url):
    page = browser.page(ui_url)
    outside: list[str] = []

    def only_loopback(route):
        host = httpx.URL(route.request.url).host
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_loopback)
    page.goto("/docs")
    page.locator(".opblock").first.wait_for(timeout=30_000)
    assert page.locator(".opblock").count() > 20
    assert page.get_by_role("button", name=re.compile("Authorize")).is_visible()
    shot(page, browser.shots, "docs")
    page.goto("/redoc")
    page.locator("[data-section-id]").first.wait_for(timeout=30_000)
    assert outside == [], outside
    page.context.close()


def test_pages_have_labels_and_keyboard_focus(browser, ui_url, ui_worker, admin):
    page = browser.page(ui_url)
    sign_in(page, admin[0])
    for path in ["/ui/runbooks/gated-fix", "/ui/loglevels", "/ui/incidents", "/ui/tokens"]:
        page.goto(path)
        unlabelled = page.evaluate("""() => Array.from(document.querySelectorAll(
            'input:not([type=hidden]), select, textarea')).filter(el =>
            !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.name)""")
        assert unlabelled == [], (path, unlabelled)
    page.goto("/ui")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, browser.shots, "overview-phone")
    page.context.close()


def test_every_page_fits_a_laptop_and_a_phone(browser, ui_url, ui_worker, admin):
    """Walk every page at 1280 px and 390 px: no page scrolls sideways (wide tables scroll inside their box),
    every field has a label; screenshots of each (walk-NAME-WIDTH.png)."""
    key = f"ui-walk-{uuid.uuid4().hex[:6]}"
    make_flag(admin[1], key)
    incident = admin[1].post("/api/v1/incidents", json={
        "title": "Walk: checkout latency", "summary": "p99 **doubled** after the deploy; see "
        "[the dashboard](https://grafana.example/d/checkout)."}).json()["id"]
    admin[1].post("/api/v1/loglevels", json={"service": "checkout", "logger": "payments.db", "level": "DEBUG",
                                             "for": "30m", "reason": "slow queries", "incident_id": incident})
    admin[1].post("/debug/loggers/runbookd.walk", json={"configuredLevel": "DEBUG", "for": "30m",
                                                        "reason": "runbookd's own", "incident_id": incident})
    admin[1].patch(f"/api/v1/flags/{key}", json={"environments": {"production": {"enabled": False}},
                                                  "for": "30m", "reason": "walk", "incident_id": incident})
    run = admin[1].post("/api/v1/runs", json={"runbook": "gated-fix", "params": {"note": "walk"},
                                              "incident_id": incident}).json()
    wait_for(lambda: admin[1].get(f"/api/v1/runs/{run['id']}").json()["status"] == "waiting_approval", 60,
             "the run to reach its gate")
    pages = {"overview": "/ui", "runbooks": "/ui/runbooks", "runbook": "/ui/runbooks/gated-fix",
             "runbook-plain": "/ui/runbooks/plain-steps", "runs": "/ui/runs", "run": f"/ui/runs/{run['id']}",
             "flags": "/ui/flags", "flag": f"/ui/flags/{key}", "loglevels": "/ui/loglevels",
             "incidents": "/ui/incidents", "incident": f"/ui/incidents/{incident}", "hooks": "/ui/hooks",
             "audit": "/ui/audit", "tokens": "/ui/tokens"}
    page = browser.page(ui_url)
    sign_in(page, admin[0])
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        for name, path in pages.items():
            page.goto(path)
            shot(page, browser.shots, f"walk-{name}-{width}")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (path, width, overflow)
            unlabelled = page.evaluate("""() => Array.from(document.querySelectorAll(
                'input:not([type=hidden]), select, textarea')).filter(el =>
                !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.name)""")
            assert unlabelled == [], (path, unlabelled)
            if name == "incident":
                _report_tables_are_readable(page, width)
    page.context.close()


def _report_tables_are_readable(page, width: int) -> None:
    """The rendered report's tables (Runbooks run has five columns): at 1280 px real tables; at 390 px each
    row stacks into labelled cells as wide as the report, rather than columns a word wide that scroll."""
    tables = page.evaluate("""() => Array.from(document.querySelectorAll('.report table')).map(t => ({
        heading: t.previousElementSibling ? t.previousElementSibling.textContent : '',
        thead: getComputedStyle(t.querySelector('thead')).display,
        scrolls: t.scrollWidth - t.clientWidth,
        narrowest: Math.min(...Array.from(t.querySelectorAll('td')).map(td => td.getBoundingClientRect().width)),
        report: document.querySelector('.report').clientWidth,
        labelled: Array.from(t.querySelectorAll('td')).every(td => td.dataset.label),
    }))""")
    assert {t["heading"] for t in tables} >= {"Runbooks run", "Changes made", "Timeline"}, tables
    for t in tables:
        assert t["labelled"] and t["scrolls"] <= 1, (width, t)
        if width >= 1280:
            assert t["thead"] == "table-header-group", t
        else:
            assert t["thead"] == "none" and t["narrowest"] >= t["report"] * 0.8, t
