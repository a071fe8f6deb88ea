from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from server.runbooks.toolkit_kinds import GitBisectInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import proc
from workers.toolkit.findings import finding

# Keep the user's and the system's git config (hooks, aliases, pagers) out of a bisect we run unattended.
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "GIT_ADVICE": "0",
           "LC_ALL": "C"}
LOG_LIMIT = 64 * 1024
_STEP_LINE = re.compile(r"^git bisect (good|bad|skip|old|new) ", re.M)


def _commit(clone: Path, rev: str, ctx: StepContext) -> dict[str, str]:
    shown = proc.run(["git", "-C", clone, "show", "-s", "--format=%H%x00%an <%ae>%x00%aI%x00%s", rev], ctx,
                     timeout=30, env=GIT_ENV)
    sha, author, date, subject = shown.stdout.rstrip("\n").split("\x00", 3)
    return {"hash": sha, "author": author, "date": date, "subject": subject}


@register("git.bisect")
class GitBisect(Step[GitBisectInputs]):
    def run(self, inputs: GitBisectInputs, ctx: StepContext) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="runbookd-bisect-") as tmp:
            clone = Path(tmp) / "repo"
            # A clone of our own: the original checkout's HEAD, index and bisect state are never touched.
            proc.run(["git", "clone", "--quiet", "--no-checkout", inputs.repo, clone], ctx, timeout=600, env=GIT_ENV)
            for rev in (inputs.good, inputs.bad):
                if proc.run(["git", "-C", clone, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], ctx,
                            timeout=30, env=GIT_ENV, check=False).returncode != 0:
                    raise StepFailed(f"{rev!r} is not a commit of {inputs.repo}")
            good = _commit(clone, inputs.good, ctx)["hash"]
            bad = _commit(clone, inputs.bad, ctx)["hash"]
            proc.run(["git", "-C", clone, "checkout", "--quiet", "--detach", bad], ctx, timeout=300, env=GIT_ENV)
            proc.run(["git", "-C", clone, "bisect", "start", bad, good], ctx, timeout=300, env=GIT_ENV)
            ctx.emit(f"bisecting {good[:12]}..{bad[:12]} in a temporary clone with: {' '.join(inputs.test)}")
            test = ["timeout", "--kill-after=5", f"{inputs.test_timeout.total_seconds():g}", *inputs.test]
            ran = proc.run(["git", "-C", clone, "bisect", "run", *test], ctx, cwd=clone, emit=True, check=False,
                           env={**GIT_ENV, **inputs.env})
            log = proc.run(["git", "-C", clone, "bisect", "log"], ctx, timeout=30, env=GIT_ENV, check=False).stdout
            # The two marks `bisect start` makes are not steps; every later good/bad/skip is one test run.
            steps = max(0, len(_STEP_LINE.findall(log)) - 2)
            outputs: dict[str, Any] = {"steps": steps, "log": log[-LOG_LIMIT:], "first_bad_commit": None,
                                       "candidates": []}
            found = re.search(r"^([0-9a-f]{40}) is the first bad commit", ran.stdout, re.M)
            if found:
                outputs["first_bad_commit"] = _commit(clone, found.group(1), ctx)
                commit = outputs["first_bad_commit"]
                ctx.emit(f"first bad commit: {found.group(1)[:12]} {commit['subject']}")
                outputs["findings"] = [finding("error", f"first bad commit {found.group(1)[:12]} "
                                                        f"\"{commit['subject']}\" by {commit['author']} "
                                                        f"({steps} test runs)", output="first_bad_commit")]
                return outputs
            outputs["candidates"] = re.findall(r"^([0-9a-f]{40})$", ran.stdout, re.M)
            if outputs["candidates"]:
                raise StepFailed(f"only skipped commits are left: the first bad commit is one of "
                                 f"{len(outputs['candidates'])} candidates", outputs)
            raise StepFailed(f"git bisect run did not finish (exit {ran.returncode}): {ran.tail()}", outputs)
