"""Issue 15, finding 1: a step's process gets a minimal environment, never the worker's settings or secrets."""

from __future__ import annotations

import pytest

from server.auth.models import Actor
from server.runbooks.catalog import CATALOG
from server.settings import Settings
from workers.steps.base import StepContext, load_step_kinds
from workers.toolkit import proc
from workers.toolkit.env import step_environment

SIGNING = "slack-signing-secret-value"


@pytest.fixture
def worker_environment(monkeypatch):
    """What a worker's environment holds in production."""
    monkeypatch.setenv("RUNBOOKD_SLACK_SIGNING_SECRET", SIGNING)
    monkeypatch.setenv("RUNBOOKD_DATABASE_URL", "postgresql://runbookd:hunter2@db/runbookd")
    monkeypatch.setenv("DATABASE_URL", "postgresql://runbookd:hunter2@db/runbookd")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("SOME_OTHER_VARIABLE", "not passed either")
    monkeypatch.setenv("LANG", "C.UTF-8")
    return Settings(slack_signing_secret=SIGNING, database_url="postgresql://runbookd:hunter2@db/runbookd")


def _ctx(settings: Settings) -> StepContext:
    return StepContext(run_id=1, step_id="s", attempt=1, actor=Actor.system(), incident_id=None, settings=settings,
                       engine=None, deadline=None, emit=lambda _line: None,  # type: ignore[arg-type]
                       evaluate=lambda expr, extra=None: None)


def _printed(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_shell_step_gets_path_lang_home_and_its_env_only(worker_environment):
    shell = load_step_kinds()["shell"]()
    out = shell.run(CATALOG["shell"].inputs.model_validate({"argv": ["printenv"], "env": {"GIVEN": "yes"}}),
                    _ctx(worker_environment))
    env = _printed(out["stdout"])
    assert set(env) <= {"PATH", "LANG", "HOME", "GIVEN"} and env["GIVEN"] == "yes" and env["LANG"] == "C.UTF-8"
    assert SIGNING not in out["stdout"] and "hunter2" not in out["stdout"]


def test_a_toolkit_process_gets_the_same_minimal_environment(worker_environment):
    done = proc.run(["printenv"], _ctx(worker_environment), env={"TOOL_SETTING": "1"})
    env = _printed(done.stdout)
    assert set(env) <= {"PATH", "LANG", "HOME", "TOOL_SETTING"} and "PATH" in env
    assert SIGNING not in done.stdout and "aws-secret" not in done.stdout


def test_passthrough_never_lets_server_names_or_secret_values_through(worker_environment):
    settings = worker_environment.model_copy(update={"step_env_passthrough": [
        "PATH", "RUNBOOKD_SLACK_SIGNING_SECRET", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "SOME_OTHER_VARIABLE",
        "COPY"]})
    env = step_environment(settings, source={"PATH": "/bin", "RUNBOOKD_SLACK_SIGNING_SECRET": SIGNING,
                                             "DATABASE_URL": "x", "AWS_SECRET_ACCESS_KEY": "y",
                                             "SOME_OTHER_VARIABLE": "fine", "COPY": SIGNING})
    assert env == {"PATH": "/bin", "SOME_OTHER_VARIABLE": "fine"}
