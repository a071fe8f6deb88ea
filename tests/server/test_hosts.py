"""Issue 15, finding 7: a forged Host header no longer steers redirects or OFREP's eventStreams URL."""

from __future__ import annotations

import httpx

from server.app import create_app
from server.auth.models import Role
from tests.support import serve


def test_redirects_and_event_stream_urls_use_the_public_url(settings, make_token):
    token = make_token(Role.admin)
    app = create_app(settings.model_copy(update={"public_url": "https://rb.example.com"}))
    with serve(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}",
                                                                "Host": "evil.example"}) as client:
        moved = client.get("/api/v1/runs/", follow_redirects=False)
        assert moved.status_code in (301, 307, 308), moved.text
        assert moved.headers["location"].startswith("https://rb.example.com/api/v1/runs")
        configuration = client.get("/ofrep/v1/configuration").json()
        assert "evil.example" not in str(configuration)


def test_allowed_hosts_refuses_other_host_headers(settings, make_token):
    token = make_token(Role.viewer)
    app = create_app(settings.model_copy(update={"allowed_hosts": ["rb.example.com", "127.0.0.1"]}))
    with serve(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        refused = client.get("/api/v1/runs/", headers={"Host": "evil.example"}, follow_redirects=False)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "host_not_allowed"
        assert client.get("/api/v1/runs", headers={"Host": "rb.example.com"}).status_code == 200
        assert client.get("/api/v1/runs").status_code == 200  # Host: 127.0.0.1:<port>
