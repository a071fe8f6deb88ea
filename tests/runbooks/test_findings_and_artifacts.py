"""Findings lead a run's summary and artifacts open: the shipped memory-leak runbook against the leaking
faulty-service, read back through the API, the CLI (runs show, runs artifacts) and a signed link opened with
no header at all; and the link's abuses (forged, altered, another run's file, a client token, expired)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from server.auth import service as auth
from server.auth.models import Role
from server.db import make_engine, session_scope
from server.runs import artifacts
from server.settings import Settings
from tests.conftest import TEST_ACTOR
from tests.runbooks.conftest import explain, fault, run
from tests.support import steps
from tests.workers.steps.toolkit_support import ptrace_problem


def cli(stack, token: str, *args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")}
    env.update(RUNBOOKD_URL=stack.url, RUNBOOKD_TOKEN=token, RUNBOOKD_CONFIG="/nonexistent", COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "server.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def viewer(stack) -> str:
    engine = make_engine(stack.settings.effective_database_url)
    with session_scope(engine) as session:
        _t, raw = auth.create_token(session, name=f"e2e-viewer-{uuid.uuid4().hex[:6]}", role=Role.viewer,
                                    actor=TEST_ACTOR)
    engine.dispose()
    return raw


@pytest.fixture(scope="module")
def leak_run(stack, service):
    if ptrace_problem(service.process.pid):
        pytest.skip("py-spy cannot attach here (the runbook's stack dump needs it)")
    with fault(stack, "leak"):
        time.sleep(1.5)
        done = run(stack, "memory-leak", {"pid_file": str(service.pid_file), "window": "3s", "interval": "250ms"})
    assert done["status"] == "succeeded", explain(done)
    return done


def test_the_leak_is_a_finding_and_the_step_reads_problem_found(leak_run):
    leaking = steps(leak_run)["leaking"]
    assert (leaking["status"], leaking["problem_found"]) == ("succeeded", True)  # control flow reads the status
    assert leaking["findings"][0]["message"].startswith("it leaks: ")
    growth = steps(leak_run)["growth"]
    assert growth["problem_found"] is True
    worst = growth["findings"][0]
    assert worst["severity"] == "error" and worst["step_id"] == "growth"
    assert "RSS grows" in worst["message"] and "MiB/min" in worst["message"]
    assert [f["severity"] for f in leak_run["findings"]][:2] == ["error", "error"]
    plot = worst["evidence"]["artifact"]
    assert plot.endswith("rss.svg")
    listed = {a["name"]: a for a in leak_run["artifacts"]}
    assert listed[plot]["content_type"] == "image/svg+xml" and listed[plot]["size"] > 100


def test_runs_show_leads_with_findings_and_lists_artifacts(stack, leak_run, viewer, tmp_path):
    shown = cli(stack, viewer, "runs", "show", str(leak_run["id"]))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.index(f"Findings of run {leak_run['id']}") < out.index("step")
    assert "✖ growth: pid" in out and "RSS grows" in out and "✖ leaking: it leaks" in out
    assert "problem found" in out
    plot = steps(leak_run)["growth"]["findings"][0]["evidence"]["artifact"]
    assert f"runbookd runs artifacts {leak_run['id']} {plot}" in out and "image/svg+xml" in out

    got = cli(stack, viewer, "runs", "artifacts", str(leak_run["id"]), plot, "-o", str(tmp_path / "files"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "files" / plot).read_bytes().startswith(b"<svg") or b"<svg" in (tmp_path / "files" /
                                                                                       plot).read_bytes()[:200]
    every = cli(stack, viewer, "runs", "artifacts", str(leak_run["id"]), "-o", str(tmp_path / "all"))
    assert every.returncode == 0 and sorted(p.name for p in (tmp_path / "all").iterdir()) == \
        sorted(a["name"] for a in leak_run["artifacts"])
    missing = cli(stack, viewer, "runs", "artifacts", str(leak_run["id"]), "nope.svg")
    assert missing.returncode == 1 and "has no artifact 'nope.svg'" in missing.stderr


def test_a_signed_link_opens_without_a_header_as_an_image_that_runs_no_script(stack, leak_run, viewer):
    plot = steps(leak_run)["growth"]["findings"][0]["evidence"]["artifact"]
    printed = cli(stack, viewer, "runs", "artifacts", str(leak_run["id"]), plot, "--link")
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    opened = httpx.get(url, timeout=10)  # no Authorization header
    assert opened.status_code == 200, opened.text
    assert opened.headers["content-type"] == "image/svg+xml"
    assert opened.headers["content-security-policy"] == artifacts.CSP and "script-src" not in artifacts.CSP
    assert "default-src 'none'" in artifacts.CSP and "sandbox" in artifacts.CSP
    assert opened.headers["x-content-type-options"] == "nosniff"
    assert b"<svg" in opened.content[:300]

    # A run link: an index, and each file under it.
    run_link = stack.operator.post(f"/api/v1/runs/{leak_run['id']}/artifacts/link", json={}).json()
    index = httpx.get(run_link["url"], timeout=10)
    assert index.status_code == 200 and plot in index.text and "text/html" in index.headers["content-type"]
    assert httpx.get(f"{run_link['url']}/{plot}", timeout=10).status_code == 200

    # Every use is audited, with who made the link.
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {viewer}"}) as reader:
        events = reader.get("/api/v1/audit", params={"action": "artifact.*", "limit": 20})
    assert events.status_code == 200, events.text
    actions = {(e["action"], e["actor"]) for e in events.json()["items"]}
    assert any(a == "artifact.open" and who.startswith("link from e2e-viewer-") for a, who in actions), actions
    assert any(a == "artifact.link" and who.startswith("e2e-viewer-") for a, who in actions), actions


def test_link_abuse_is_refused(stack, leak_run, tmp_path):
    plot = steps(leak_run)["growth"]["findings"][0]["evidence"]["artifact"]
    one = stack.operator.post(f"/api/v1/runs/{leak_run['id']}/artifacts/link", json={"name": plot}).json()
    token = one["url"].rsplit("/a/", 1)[1]
    # Another file through a link signed for one file.
    other = next(a["name"] for a in leak_run["artifacts"] if a["name"] != plot)
    assert httpx.get(f"{one['url']}/{other}", timeout=10).status_code == 403
    # An altered token, or one forged with another key.
    altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert httpx.get(f"{stack.url}/a/{altered}", timeout=10).status_code == 403
    forged = artifacts.sign(Settings(home=tmp_path, artifact_link_secret="guess"), None, run_id=leak_run["id"],
                            name=None, by="mallory")
    assert httpx.get(f"{stack.url}/a/{forged.url.rsplit('/a/', 1)[1]}", timeout=10).status_code == 403
    # Path tricks never leave the run's directory.
    run_link = stack.operator.post(f"/api/v1/runs/{leak_run['id']}/artifacts/link", json={}).json()
    for name in ("..%2F..%2Frunbookd.sqlite3", ".hidden", "..", "artifact-link.key"):
        assert httpx.get(f"{run_link['url']}/{name}", timeout=10).status_code in (403, 404)
    # A service's client token may not make links; a missing artifact is a 404, not a link.
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.client_token}"}) as client:
        assert client.post(f"/api/v1/runs/{leak_run['id']}/artifacts/link", json={}).status_code == 403
    assert stack.operator.post(f"/api/v1/runs/{leak_run['id']}/artifacts/link",
                               json={"name": "nope.svg"}).status_code == 404
    assert stack.operator.post("/api/v1/runs/999999/artifacts/link", json={}).status_code == 404


def test_links_expire(tmp_path):
    settings = Settings(home=tmp_path, artifact_link_ttl="1s", artifact_link_secret="s3cret")
    link = artifacts.sign(settings, None, run_id=1, name="x.svg", by="ann")
    token = link.url.rsplit("/a/", 1)[1]
    assert artifacts.verify(settings, None, token)["name"] == "x.svg"
    time.sleep(2.2)
    with pytest.raises(artifacts.Gone, match="expired"):
        artifacts.verify(settings, None, token)


@pytest.mark.parametrize(("name", "kind", "inline"), [
    ("a.1.rss.svg", "image/svg+xml", True), ("a.1.matches.jsonl", "application/x-ndjson", True),
    ("a.1.gdb.txt", "text/plain; charset=utf-8", True), ("a.1.profile.speedscope.json", "application/json", True),
    ("a.1.core", "application/octet-stream", False), ("a.1.page.html", "text/plain; charset=utf-8", True),
    ("a.1.x.js", "application/octet-stream", False),
])
def test_content_types(name, kind, inline):
    headers = artifacts.headers_for(name)
    assert headers["Content-Type"] == kind
    assert headers["Content-Disposition"].startswith("inline" if inline else "attachment")
