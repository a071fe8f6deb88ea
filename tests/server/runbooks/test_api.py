"""The runbooks API: list with skipped files, detail, validate (all errors at once), upload (audited), reload."""

from __future__ import annotations

import shutil

from server.app import create_app
from server.auth.models import Role
from tests.support import http, serve, wait_for

GOOD = "title: Uploaded\nsteps: [{id: a, uses: log, with: {message: hi}}]\n"


def test_list_and_detail_of_shipped_runbooks(base_url, make_token):
    with http(base_url, make_token(Role.viewer)) as client:
        listing = client.get("/api/v1/runbooks").json()
        ids = {item["id"] for item in listing["items"]}
        assert {"http-health-triage", "is-it-the-deploy", "smoke-check-with-fix"} <= ids
        detail = client.get("/api/v1/runbooks/http-health-triage").json()
        missing = client.get("/api/v1/runbooks/no-such-runbook")
    assert detail["params"]["base_url"]["required"] is True
    assert detail["params"]["webhook_url"]["secret"] is True
    assert [s["id"] for s in detail["steps"]][:2] == ["reproduce", "sample-2"]
    assert detail["steps"][0]["phase"] == "reproduce" and detail["timeout"] == "5m"
    assert missing.status_code == 404 and "http-health-triage" in missing.json()["error"]["message"]


def test_validate_reports_every_error_and_warning(base_url, make_token):
    text = ("title: t\nparams: {h: {type: string}}\nsteps:\n  - {id: a, uses: nope}\n  - {id: a, uses: log}\n"
            "  - {id: c, uses: shell, with: {argv: [bash, -c, 'ping {{ params.h }}']}}\n")
    with http(base_url, make_token(Role.viewer)) as client:
        result = client.post("/api/v1/runbooks/validate", json={"content": text, "filename": "mine.yaml"}).json()
    assert result["valid"] is False
    assert [(e["line"], e["column"]) for e in result["errors"]] == [(4, 19), (5, 10), (5, 5)]
    assert len(result["warnings"]) == 1 and result["warnings"][0]["file"] == "mine.yaml"


def _files(listing: dict) -> list[str]:
    """The runbooks read from files: other tests of the session upload runbooks into the shared database."""
    return [i["id"] for i in listing["items"] if i["source"] == "file"]


def test_a_bad_file_is_listed_as_skipped_and_reload_picks_up_changes(settings, tmp_path, make_token):
    directory = tmp_path / "runbooks"
    directory.mkdir()
    (directory / "fine.yaml").write_text(GOOD)
    (directory / "broken.yaml").write_text("title: [unclosed\n")
    app_settings = settings.model_copy(update={"runbooks_dir": directory})
    with serve(create_app(app_settings)) as url, http(url, make_token(Role.admin)) as client:
        listing = client.get("/api/v1/runbooks").json()
        assert _files(listing) == ["fine"]
        assert listing["problems"][0]["file"].endswith("broken.yaml")
        broken = client.get("/api/v1/runbooks/broken")
        assert broken.status_code == 404 and "invalid" in broken.json()["error"]["message"]
        shutil.copy(directory / "fine.yaml", directory / "second.yaml")
        reloaded = client.post("/api/v1/runbooks/reload").json()
        assert _files(reloaded) == ["fine", "second"]
        (directory / "third.yaml").write_text(GOOD)  # noticed without a reload, within a second or so
        wait_for(lambda: len(_files(client.get("/api/v1/runbooks").json())) == 3, 5, "the new file to be seen")


def test_upload_is_admin_only_audited_and_refuses_invalid_text(base_url, make_token, admin_token):
    with http(base_url, make_token(Role.operator)) as operator:
        assert operator.post("/api/v1/runbooks", json={"content": GOOD}).status_code == 403
    with http(base_url, admin_token) as admin:
        invalid = admin.post("/api/v1/runbooks", json={"content": "title: x\nsteps: [{id: a, uses: nope}]"})
        assert invalid.status_code == 422 and invalid.json()["error"]["details"][0]["line"] == 2
        clash = admin.post("/api/v1/runbooks", json={"content": "id: is-it-the-deploy\n" + GOOD})
        assert clash.status_code == 409
        created = admin.post("/api/v1/runbooks", json={"content": "id: uploaded-one\n" + GOOD})
        assert created.status_code == 201 and created.json()["source"] == "upload"
        assert admin.get("/api/v1/runbooks/uploaded-one").json()["title"] == "Uploaded"
        audit = admin.get("/api/v1/audit", params={"action": "runbook.upload", "target_id": "uploaded-one"}).json()
    assert len(audit["items"]) == 1
