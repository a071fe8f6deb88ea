"""Project promises that are easy to break without noticing: docs, the CI entry point, the test packages."""

from __future__ import annotations

from server.settings import Settings
from tests.support import REPO


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    missing = [f"RUNBOOKD_{name.upper()}" for name in Settings.model_fields
               if f"`RUNBOOKD_{name.upper()}`" not in readme]
    assert not missing, f"README.md's settings table lacks {missing}"
    assert "make up" in readme and "make test" in readme


def test_ci_runs_lint_then_the_suite_and_stops_at_the_first_failure():
    """Lint and the nested `make test` used to run inside pytest; CI runs them itself, in this order."""
    lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in lines
    assert lines.index("make lint") < lines.index("make test")


def test_every_debian_package_the_tests_need_is_listed_once():
    listed = [line.split("#")[0].strip() for line in (REPO / "tests/debian-packages.txt").read_text().splitlines()]
    listed = [name for name in listed if name]
    assert len(listed) == len(set(listed))
    assert {"postgresql", "prometheus", "prometheus-alertmanager", "gdb", "chromium", "chromium-driver"} <= set(listed)
