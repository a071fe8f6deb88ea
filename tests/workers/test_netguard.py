"""Issue 15, finding 4: http steps reach only what the settings allow, checked after DNS and on each redirect."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from server.runbooks.catalog import CATALOG
from server.settings import Settings
from tests.support import serve
from workers.steps import http_request
from workers.steps.base import StepFailed, load_step_kinds


@pytest.fixture(scope="module")
def target():
    app = FastAPI()

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/to")
    def to(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=302)

    with serve(app) as url:
        yield url


def _use(monkeypatch, **rules):
    settings = Settings(**rules)
    monkeypatch.setattr("workers.toolkit.netguard.get_settings", lambda: settings)


def _get(url: str, **kw):
    return http_request.send("GET", url, timeout=5, **kw)


def test_cloud_metadata_and_link_local_are_refused_by_default_without_connecting(monkeypatch):
    _use(monkeypatch)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/",
                "http://[::ffff:169.254.169.254]/", "http://metadata.google.internal/computeMetadata/v1/"):
        started = time.monotonic()
        with pytest.raises(Exception, match="blocked by RUNBOOKD_HTTP_DENY"):
            _get(url)
        assert time.monotonic() - started < 1  # refused, not a connect timeout


def test_loopback_stays_allowed_by_default(monkeypatch, target):
    _use(monkeypatch)
    assert _get(f"{target}/ok")["status"] == 200


def test_a_name_is_checked_after_it_resolves(monkeypatch, target):
    _use(monkeypatch, http_deny_cidrs=["127.0.0.0/8", "::1/128"])
    port = target.rsplit(":", 1)[1]
    with pytest.raises(Exception, match=r"localhost \((127\.0\.0\.1|::1)\) is blocked"):
        _get(f"http://localhost:{port}/ok")


def test_each_redirect_is_checked(monkeypatch, target):
    _use(monkeypatch, http_deny_cidrs=["127.0.0.2/32", "169.254.0.0/16"])
    port = target.rsplit(":", 1)[1]
    assert _get(f"{target}/to?url={target}/ok", follow_redirects=True)["status"] == 200
    with pytest.raises(Exception, match=r"127\.0\.0\.2 \(127\.0\.0\.2\) is blocked"):
        _get(f"{target}/to?url=http://127.0.0.2:{port}/ok", follow_redirects=True)
    with pytest.raises(Exception, match="is blocked"):
        _get(f"{target}/to?url=http://169.254.169.254/latest/", follow_redirects=True)


def test_allow_lists_restrict_and_deny_wins(monkeypatch, target):
    _use(monkeypatch, http_allow_cidrs=["10.0.0.0/8"])
    with pytest.raises(Exception, match="not in RUNBOOKD_HTTP_ALLOW"):
        _get(f"{target}/ok")
    _use(monkeypatch, http_allow_hosts=["localhost"])
    port = target.rsplit(":", 1)[1]
    assert _get(f"http://localhost:{port}/ok")["status"] == 200
    _use(monkeypatch, http_allow_hosts=["localhost"], http_deny_hosts=["localhost"])
    with pytest.raises(Exception, match="DENY_HOSTS"):
        _get(f"http://localhost:{port}/ok")


def test_the_http_request_step_says_why(monkeypatch):
    _use(monkeypatch)
    step = load_step_kinds()["http.request"]()
    from tests.workers.steps.test_core_kinds import ctx
    with pytest.raises(StepFailed, match=r"169\.254\.169\.254.*blocked"):
        step.run(CATALOG["http.request"].inputs.model_validate({"url": "http://169.254.169.254/"}), ctx())


def test_bad_networks_are_refused_at_startup():
    with pytest.raises(ValueError, match="not a network"):
        Settings(http_deny_cidrs=["169.254.0.0/99"])


def test_a_proxy_in_the_workers_environment_does_not_bypass_the_rules(monkeypatch, target):
    """httpx honours HTTP_PROXY only without an explicit transport; every http step passes netguard's."""
    import socket
    import threading

    accepted: list[object] = []
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        proxy.settimeout(3)
        address = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, address)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        def watch() -> None:
            try:
                accepted.append(proxy.accept()[0])
            except OSError:
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _use(monkeypatch)
        with pytest.raises(Exception, match="blocked by RUNBOOKD_HTTP_DENY"):
            _get("http://169.254.169.254/latest/meta-data/")
        assert _get(f"{target}/ok")["json"] == {"status": "ok"}  # straight to the target, not through the proxy
        watcher.join(timeout=4)
        assert accepted == [], "an http step connected to the proxy from the environment"
