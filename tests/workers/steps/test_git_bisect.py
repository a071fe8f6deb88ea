"""git.bisect on a real repository of 100 commits with a regression planted at a known one."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from server.runbooks.toolkit_kinds import GitBisectInputs
from tests.workers.steps.toolkit_support import make_ctx, wait_for_children_gone
from workers.steps.base import StepFailed, StepInterrupted
from workers.steps.git_bisect import GitBisect

COMMITS = 100
PLANTED = 63  # 1-based: the 63rd commit breaks add()

CALC_GOOD = "def add(a, b):\n    return a + b\n"
CALC_BAD = "def add(a, b):\n    return a + b + (1 if a == 2 else 0)\n"
TEST = "import sys\nimport calc\nsys.exit(0 if calc.add(2, 2) == 4 else 1)\n"


def _data(text: str) -> bytes:
    raw = text.encode()
    return b"data %d\n%s\n" % (len(raw), raw)


def build_repo(path: Path) -> list[str]:
    """100 commits through git fast-import (fast, deterministic dates); returns their hashes, oldest first."""
    subprocess.run(["git", "init", "--quiet", "--initial-branch", "main", str(path)], check=True)
    stream = bytearray()
    for i in range(1, COMMITS + 1):
        stream += b"commit refs/heads/main\nmark :%d\n" % i
        stream += b"author Dev %d <dev%d@example.com> %d +0000\n" % (i % 5, i % 5, 1_700_000_000 + i * 60)
        stream += b"committer Dev <dev@example.com> %d +0000\n" % (1_700_000_000 + i * 60)
        stream += _data(f"change {i}" + (": tweak add()" if i == PLANTED else ""))
        if i > 1:
            stream += b"from :%d\n" % (i - 1)
        stream += b"M 644 inline calc.py\n" + _data(CALC_BAD if i >= PLANTED else CALC_GOOD)
        stream += b"M 644 inline test_calc.py\n" + _data(TEST)
        stream += b"M 644 inline notes.txt\n" + _data(f"note {i}\n")
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=bytes(stream), check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "--quiet", "main"], check=True)
    log = subprocess.run(["git", "-C", str(path), "rev-list", "--reverse", "main"], capture_output=True, text=True,
                         check=True)
    return log.stdout.split()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("bisect") / "repo"
    return path, build_repo(path)


def _state(path: Path) -> tuple[str, str, list[str]]:
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    status = subprocess.run(["git", "-C", str(path), "status", "--porcelain"], capture_output=True, text=True).stdout
    return head, status, sorted(p.name for p in (path / ".git").iterdir())


def test_finds_the_planted_commit_in_at_most_8_steps_without_touching_the_checkout(repo, tmp_path):
    path, hashes = repo
    before = _state(path)
    ctx = make_ctx(tmp_path)
    inputs = GitBisectInputs(repo=str(path), good=hashes[0], bad="main", test=["python3", "test_calc.py"])
    outputs = GitBisect().run(inputs, ctx)
    first = outputs["first_bad_commit"]
    assert first["hash"] == hashes[PLANTED - 1]
    assert first["subject"] == f"change {PLANTED}: tweak add()"
    assert first["author"] == f"Dev {PLANTED % 5} <dev{PLANTED % 5}@example.com>"
    assert first["date"].startswith("2023-11-14T")
    assert 1 <= outputs["steps"] <= 8
    (found,) = outputs["findings"]
    assert found["severity"] == "error" and found["evidence"] == {"output": "first_bad_commit"}
    assert found["message"].startswith(f"first bad commit {hashes[PLANTED - 1][:12]} \"change {PLANTED}")
    assert outputs["log"].count("# first bad commit") == 1
    assert _state(path) == before  # same HEAD, clean tree, no BISECT_* files in the original .git


def test_skipped_commits_are_reported_as_candidates(repo, tmp_path):
    path, hashes = repo
    # Every commit is "untestable": bisect can only narrow it down to candidates, and says so.
    inputs = GitBisectInputs(repo=str(path), good=hashes[90], bad="main", test=["sh", "-c", "exit 125"])
    with pytest.raises(StepFailed) as failed:
        GitBisect().run(inputs, make_ctx(tmp_path))
    assert "only skipped commits" in failed.value.message
    assert hashes[-1] in failed.value.outputs["candidates"]


def test_unknown_revision_fails_clearly(repo, tmp_path):
    path, _hashes = repo
    inputs = GitBisectInputs(repo=str(path), good="no-such-tag", bad="main", test=["true"])
    with pytest.raises(StepFailed, match="'no-such-tag' is not a commit"):
        GitBisect().run(inputs, make_ctx(tmp_path))


def test_cancel_kills_the_running_test(repo, tmp_path):
    path, hashes = repo
    pid_file = tmp_path / "test.pid"
    ctx = make_ctx(tmp_path)
    inputs = GitBisectInputs(repo=str(path), good=hashes[0], bad="main",
                             test=["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"])
    threading.Timer(1.5, ctx.cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(StepInterrupted, match="cancelled"):
        GitBisect().run(inputs, ctx)
    assert time.monotonic() - started < 10
    assert wait_for_children_gone(pid_file), "the bisect's test process outlived the cancel"


def test_a_test_over_its_timeout_counts_as_bad_and_is_killed(repo, tmp_path):
    path, hashes = repo
    # A hang is a failure: timeout(1) kills the test (exit 124, "bad"), so bisect still converges.
    inputs = GitBisectInputs(repo=str(path), good=hashes[95], bad="main", test_timeout="1s",
                             test=["sh", "-c", "python3 test_calc.py || exec sleep 30"])
    outputs = GitBisect().run(inputs, make_ctx(tmp_path))
    assert outputs["first_bad_commit"]["hash"] == hashes[96]
