"""Issue 15: the API fuzzed against its own OpenAPI document with Schemathesis, as an admin and as a viewer.

Checks: no 5xx, every response (errors included) matches its documented schema, every status code is
documented. A private database, Redis prefix and runbooks directory: fuzzing writes tokens, flags, runbooks.
Server-Sent Event streams are left out (a stream never ends); their 4xx answers are in test_bad_input.py.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from server.app import create_app
from server.auth import service as auth
from server.auth.models import Role
from server.db import make_engine, session_scope
from server.migrate import upgrade
from server.settings import SHIPPED_RUNBOOKS_DIR, Settings
from tests.conftest import TEST_ACTOR
from tests.support import delete_prefixed_keys, serve

EXAMPLES_PER_OPERATION = 12
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory, redis_url, request):
    home = tmp_path_factory.mktemp("fuzz-home")
    runbooks = home / "runbooks"
    shutil.copytree(SHIPPED_RUNBOOKS_DIR, runbooks)
    database = f"sqlite:///{home / 'fuzz.sqlite3'}"
    upgrade(database)
    prefix = f"rbdfuzz-{uuid.uuid4().hex[:8]}:"
    settings = Settings(home=home, database_url=database, redis_url=redis_url, redis_prefix=prefix,
                        runbooks_dir=runbooks, default_queue=f"fuzz-{uuid.uuid4().hex[:6]}", log_level="ERROR",
                        # configured, so the chat endpoints check signatures and tokens instead of answering 503
                        slack_signing_secret="fuzz-" + uuid.uuid4().hex, mattermost_token="fuzz-" + uuid.uuid4().hex)
    engine = make_engine(database)
    tokens = {}
    with session_scope(engine) as session:
        for i in range(20):  # decoys take the small ids a fuzzer tries first in DELETE /api/v1/tokens/{ref}
            auth.create_token(session, name=f"decoy-{i}", role=Role.viewer, actor=TEST_ACTOR)
        for role in (Role.admin, Role.viewer):
            _t, tokens[role.value] = auth.create_token(session, name=f"fuzz-{role.value}-{uuid.uuid4().hex}",
                                                       role=role, actor=TEST_ACTOR)
    engine.dispose()
    with serve(create_app(settings)) as url:
        assert httpx.get(f"{url}/openapi.json").json() == DOCUMENT
        yield url, tokens
    delete_prefixed_keys(redis_url, prefix)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (f"schemathesis: {len({k.split(' ', 1)[1] for k in COUNTS if k.startswith('op ')})} operations, "
            f"{COUNTS['examples']} examples ({COUNTS['examples admin']} admin, {COUNTS['examples viewer']} viewer), "
            f"{COUNTS['failures']} failures")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(line)
    (home / "schemathesis-summary.txt").write_text(line + "\n")


def _document() -> dict:
    """The app's OpenAPI document, built without serving (collection happens before fixtures run);
    fuzz_api checks the live server serves exactly this one."""
    return create_app(Settings()).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path_regex=r"/events$")


SETTINGS = hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def _call(case, fuzz_api, role: str) -> None:
    url, tokens = fuzz_api
    COUNTS["examples"] += 1
    COUNTS[f"examples {role}"] += 1
    COUNTS[f"op {case.operation.label}"] += 1
    try:
        case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {tokens[role]}"},
                               checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
                               timeout=30)
    except BaseException:  # schemathesis raises a FailureGroup, an exception group
        COUNTS["failures"] += 1
        raise


@schema.parametrize()
@SETTINGS
def test_api_as_admin_conforms_to_its_openapi_document(case, fuzz_api):
    _call(case, fuzz_api, "admin")


@schema.parametrize()
@SETTINGS
def test_api_as_viewer_conforms_to_its_openapi_document(case, fuzz_api):
    _call(case, fuzz_api, "viewer")
