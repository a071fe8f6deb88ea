"""`runbookd incident ...` against a live server, as an on-call engineer types it."""

from __future__ import annotations

import json
import subprocess

from server.auth.models import Role
from tests.support import cli


def _cli(base_url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(["incident", *args],
               {"RUNBOOKD_URL": base_url, "RUNBOOKD_TOKEN": token, "RUNBOOKD_CONFIG": "/nonexistent"})


def test_open_show_export_rollback_resolve(base_url, make_token, tmp_path):
    token = make_token(Role.operator)
    # Brackets in text the CLI prints are text, not Rich markup.
    opened = _cli(base_url, token, "open", "Queue backlog [eu-west] [/]", "--severity", "sev2")
    assert opened.returncode == 0, opened.stderr
    ref = opened.stdout.strip()
    assert ref.startswith("INC-") and "opened (sev2)" in opened.stderr

    shown = _cli(base_url, token, "show", ref)
    assert shown.returncode == 0 and "incident.open" in shown.stdout
    assert f"{ref} [sev2, open] Queue backlog [eu-west] [/]" in shown.stdout, shown.stdout

    dry = _cli(base_url, token, "rollback", ref, "--dry-run")
    assert dry.returncode == 0, dry.stderr

    report = tmp_path / "report.json"
    exported = _cli(base_url, token, "export", ref, "--format", "json", "-o", str(report))
    assert exported.returncode == 0, exported.stderr
    assert json.loads(report.read_text())["incident"]["id"] == ref
    markdown = _cli(base_url, token, "export", ref)
    assert markdown.stdout.startswith(f"# {ref}: Queue backlog")

    resolved = _cli(base_url, token, "resolve", ref, "--summary", "drained")
    assert resolved.returncode == 0 and f"{ref} resolved" in resolved.stderr
    listed = _cli(base_url, token, "list", "--status", "resolved")
    assert ref in listed.stdout


def test_errors_are_explained(base_url, make_token):
    viewer = make_token(Role.viewer)
    refused = _cli(base_url, viewer, "open", "nope")
    assert refused.returncode == 1 and "not allowed" in refused.stderr and "operator" in refused.stderr
    missing = _cli(base_url, viewer, "show", "INC-424242")
    assert missing.returncode == 1 and "no incident" in missing.stderr
    bad_format = _cli(base_url, viewer, "export", "INC-1", "--format", "pdf")
    assert bad_format.returncode == 2 and "md or json" in bad_format.stderr
