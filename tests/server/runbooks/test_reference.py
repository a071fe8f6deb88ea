"""docs/runbooks.md is generated from the step catalog: it fails here the moment they disagree."""

from __future__ import annotations

import re

import yaml

from server.runbooks.catalog import CATALOG
from server.runbooks.reference import render
from server.runbooks.validation import check_text
from tests.support import REPO

DOC = REPO / "docs" / "runbooks.md"


def test_the_reference_is_what_the_catalog_generates():
    assert DOC.read_text() == render(), (
        "docs/runbooks.md is out of date: run `runbookd runbooks reference > docs/runbooks.md`")


def test_every_kind_and_input_is_documented():
    text = DOC.read_text()
    for name, spec in CATALOG.items():
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        for field_name, field in spec.inputs.model_fields.items():
            assert f"| `{field.alias or field_name}` |" in section, (name, field_name)
        for output in spec.outputs:
            assert f"`{output}`" in section, (name, output)
    for topic in ("| `list` |", "fullmatch", "`if:` is a bare expression", "## Findings", "would wait for approval"):
        assert topic in text, topic


def test_the_readme_example_runbook_validates_and_its_pattern_can_match():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Runbooks and runs", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    checked = check_text(block, "README.md")
    assert not checked.errors, checked.errors
    for name, spec in yaml.safe_load(block)["params"].items():
        if spec.get("pattern") and name.endswith("url"):
            assert re.fullmatch(spec["pattern"], "https://shop.example.com"), spec["pattern"]


def test_runbooks_readme_lists_every_shipped_runbook_and_links_only_inside_the_repo():
    text = (REPO / "runbooks" / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, re.M))
    shipped = {p.stem for p in (REPO / "runbooks").glob("*.yaml")}
    assert listed == shipped
    assert "http://" not in text and "https://" not in text
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (REPO / "runbooks" / target).resolve().exists(), target


def test_runbooks_show_gives_params_and_steps_by_phase(base_url, make_token):
    from server.auth.models import Role
    from tests.server.flags.test_cli import runbookd

    shown = runbookd(base_url, make_token(Role.viewer), "runbooks", "show", "memory-leak")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "memory-leak: Memory leak" in out
    assert re.search(r"threshold_mb_per_min\s+│\s+number\s+│\s+no\s+│\s+10", out), out
    observe, test = out.index("│ observe │ growth"), out.index("│ test    │ leaking")
    assert observe < out.index("│ observe │ threads") < test  # grouped by phase, in step order within one
    assert "run it: runbookd run memory-leak --follow" in out
    missing = runbookd(base_url, make_token(Role.viewer), "runbooks", "show", "nope")
    assert missing.returncode == 1 and "runbookd runbooks list" in missing.stderr
