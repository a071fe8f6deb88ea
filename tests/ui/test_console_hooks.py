"""The console's Alerts page: deliveries and their decisions for a viewer; a hook token cannot sign in."""

from __future__ import annotations

import re
import uuid

import httpx

from server.auth.models import Role
from tests.ui.test_console_http import signed_in


def _delivery(url: str, token: str) -> int:
    body = {"version": "4", "groupKey": f"ui-{uuid.uuid4().hex[:6]}", "status": "firing", "receiver": "runbookd",
            "alerts": [{"status": "firing", "labels": {"alertname": "ConsoleProbe<b>", "job": "x"},
                        "annotations": {}, "startsAt": "2026-12-02T00:00:00Z", "fingerprint": "f00d"}]}
    response = httpx.post(f"{url}/hooks/alertmanager", json=body, headers={"Authorization": f"Bearer {token}"},
                          timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["delivery_id"]


def test_the_alerts_page_lists_deliveries_and_each_decision(ui_url, ui_token):
    delivery_id = _delivery(ui_url, ui_token(Role.hook))
    with signed_in(ui_url, ui_token(Role.viewer)) as viewer:
        listing = viewer.get("/ui/hooks")
        detail = viewer.get(f"/ui/hooks/{delivery_id}")
        filtered = viewer.get("/ui/hooks", params={"source": "generic:none"})
        missing = viewer.get("/ui/hooks/999999999")
    assert listing.status_code == 200 and f'href="/ui/hooks/{delivery_id}"' in listing.text
    assert 'aria-current="page">Alerts<' in listing.text
    assert detail.status_code == 200 and "no rule matched" in detail.text
    assert "ConsoleProbe&lt;b&gt;" in detail.text and "ConsoleProbe<b>" not in detail.text  # escaped
    assert f'href="/ui/hooks/{delivery_id}"' not in filtered.text
    assert missing.status_code == 404


def test_a_hook_token_cannot_sign_in_to_the_console(ui_url, ui_token):
    with httpx.Client(base_url=ui_url, timeout=30) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/sign-in").text).group(1)
        response = client.post("/ui/sign-in", data={"csrf": csrf, "token": ui_token(Role.hook)})
        assert response.status_code == 401 and "may only deliver alerts" in response.text
        assert "runbookd_session" not in client.cookies
