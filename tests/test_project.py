"""Project promises that are easy to break without noticing: docs, CI entry point, lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from server.settings import Settings
from tests.support import REPO


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    missing = [f"RUNBOOKD_{name.upper()}" for name in Settings.model_fields
               if f"`RUNBOOKD_{name.upper()}`" not in readme]
    assert not missing, f"README.md's settings table lacks {missing}"
    assert "make up" in readme and "make test" in readme


@pytest.mark.slow
@pytest.mark.parametrize(("body", "passes"), [("assert 1 + 1 == 2", True), ("assert 1 + 1 == 3", False)])
def test_ci_runs_make_test_and_fails_when_a_test_fails(tmp_path, body, passes):
    assert "make test" in (REPO / ".ci/run").read_text()
    probe = tmp_path / "test_probe.py"
    probe.write_text(textwrap.dedent(f"""
        def test_probe():
            {body}
    """))
    if os.environ.get("RUNBOOKD_TEST_NESTED"):
        pytest.skip("already inside the CI probe")
    # Drop make's own variables too: `make test PYTEST_ARGS=...` hands its overrides down in MAKEFLAGS,
    # which would make the inner make run the whole suite again, and that one this test again.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUNBOOKD_", "PYTEST_")) and k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    env.update(PYTEST_ARGS=f"{probe} -p no:cacheprovider --rootdir {tmp_path}", RUNBOOKD_TEST_NESTED="1")
    done = subprocess.run(["bash", ".ci/run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) is passes, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_lint_is_clean():
    if shutil.which("ruff", path=str(REPO / ".venv/bin")) is None:
        pytest.skip("ruff is not installed in .venv (make test installs it)")
    done = subprocess.run(["make", "--no-print-directory", "lint"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
