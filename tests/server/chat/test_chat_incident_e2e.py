"""An incident worked entirely from chat, against a real worker, beat, and a local server playing Slack's
response_url: open, run a runbook, kill-switch a flag, raise a log level; then the timeline, the rollback
(with a flag changed meanwhile outside the incident left alone) and the report."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from server.app import create_app
from server.auth.models import Role
from tests.conftest import subprocess_env
from tests.server.chat.conftest import TEAM, Slack, mattermost
from tests.support import http, processes, serve, wait_for

pytestmark = pytest.mark.slow
RUNBOOKS = Path(__file__).parent / "runbooks"


class ResponseUrl:
    """A real HTTP server on loopback that records what is POSTed to it, as Slack's response_url would."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self, path: str) -> list[str]:
        return [body["text"] for p, body in self.received if p == path]


@pytest.fixture(scope="module")
def e2e(chat_settings, tmp_path_factory):
    # A queue of its own for runs and beat's tasks: other modules' workers must not hold this module's runs.
    settings = chat_settings.model_copy(update={"runbooks_dir": RUNBOOKS,
                                                "default_queue": f"chat-e2e-{uuid.uuid4().hex[:8]}"})
    logs = tmp_path_factory.mktemp("e2e-procs")
    env = subprocess_env(settings)
    receiver = ResponseUrl()
    try:
        with processes(grace=30) as spawn:  # stopped however this is left, a start-up timeout included
            for name, args in (("worker", ["worker", "--concurrency", "2",
                                           "--hostname", f"chat-{uuid.uuid4().hex[:6]}@%h"]), ("beat", ["beat"])):
                with (logs / f"{name}.log").open("wb") as log:
                    spawn([sys.executable, "-m", "server.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
            wait_for(lambda: b" ready." in (logs / "worker.log").read_bytes(), 60, "the worker to start")
            with serve(create_app(settings)) as url:
                yield url, receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_an_incident_from_chat_end_to_end(e2e, make_token):
    url, receiver = e2e
    slack = Slack(url)
    admin = make_token(Role.admin)
    suffix = uuid.uuid4().hex[:6]
    pricing, search, ranking = f"new-pricing-{suffix}", f"search-v2-{suffix}", f"ranking-{suffix}"
    with http(url, admin) as api:
        for key in (pricing, search, ranking):
            created = api.post("/api/v1/flags", json={"key": key, "type": "boolean", "enabled": True,
                                                      "variants": {"on": True, "off": False},
                                                      "default_variant": "on"})
            assert created.status_code == 201, created.text

    channel = "CWAR"  # allowed, and mapped to operator for everyone in it
    opened = slack.command('incident open "Checkout errors" sev2', channel=channel).json()
    assert opened["response_type"] == "in_channel", opened
    incident = opened["text"].split()[1]
    assert incident.startswith("INC-")

    run_reply = slack.command("run triage service=checkout", channel=channel,
                              response_url=f"{receiver.url}/slack-hook").json()
    assert f"under {incident}" in run_reply["text"], run_reply
    run_id = int(run_reply["text"].split("#")[1].split()[0])

    kill = slack.command(f"flag {pricing} off for 30m pricing bug", channel=channel).json()
    assert "turned off" in kill["text"] and "then it reverts" in kill["text"], kill
    assert "reverts" not in slack.command(f"flag {search} off", channel=channel).json()["text"]
    slack.command(f"flag {ranking} off", channel=channel)
    verbose = slack.command("loglevel checkout app.db DEBUG for 15m slow queries", channel=channel).json()
    assert "at DEBUG" in verbose["text"], verbose

    # Someone outside the incident changes search-v2 afterwards: the rollback must leave it alone.
    with http(url, admin) as api:
        outside = api.patch(f"/api/v1/flags/{search}", json={"description": "tuned by the search team",
                                                              "reason": "unrelated tuning"})
        assert outside.status_code == 200, outside.text
        # ... and someone turns ranking back on outside the incident: that one is a conflict.
        turned = api.patch(f"/api/v1/flags/{ranking}", json={"environments": {"production": {"enabled": True}},
                                                               "reason": "ranking is fine"})
        assert turned.status_code == 200, turned.text
        api.patch(f"/api/v1/flags/{ranking}", json={"environments": {"production": {"enabled": False}}})

    # The worker posts the run's outcome to the response_url, as Slack expects.
    wait_for(lambda: any(f"Run #{run_id}" in t and "succeeded" in t for t in receiver.texts("/slack-hook")),
             45, "the run summary at the response_url")
    summary = next(t for t in receiver.texts("/slack-hook") if f"Run #{run_id}" in t)
    assert "[observe] `observe`" in summary and "[verify] `verify`" in summary and "/api/v1/runs/" in summary
    # The summary leads with what the run found; the step that confirmed it reads "problem found".
    assert summary.index("*Findings:*") < summary.index("[observe]")
    assert ":red_circle: verify: checkout answers 500 to one request in three" in summary
    assert "`verify` :mag: problem found (succeeded)" in summary

    with http(url, admin) as api:
        timeline = api.get(f"/api/v1/incidents/{incident}/timeline").json()
        actions = [e["action"] for e in timeline]
        assert actions[0] == "incident.open"
        order = [actions.index("run.create"), actions.index("run.finished"),
                 next(i for i, e in enumerate(timeline) if e["kind"] == "flag" and pricing in e["target"]),
                 actions.index("loglevel.raise")]
        assert order[0] < order[2] < order[3] and order[0] < order[1]
        assert all(e["actor"] for e in timeline)
        assert any(e["actor"] == f"slack:{TEAM}/UOPS" for e in timeline)
        summaries = [e["summary"] for e in timeline]
        # A kill reads as one, and nobody's name is written twice (the actor has its own column).
        assert f"killed flag {pricing} in production for 30m (version 2) (pricing bug)" in summaries, summaries
        assert not [t for t in summaries if t.startswith(("slack:", "admin:", "system:"))], summaries
        # Step starts and ends fold into one row per step, with its result.
        steps_rows = [e for e in timeline if e["kind"] == "step" and f"run {run_id} " in e["summary"]]
        assert [e["details"]["step_id"] for e in steps_rows] == ["observe", "verify"], steps_rows
        assert steps_rows[1]["summary"].endswith("step verify: problem found (succeeded): checkout answers 500 "
                                                 "to one request in three")
        assert "step.started" not in actions and "step.finished" not in actions

        dry = api.post(f"/api/v1/incidents/{incident}/rollback", json={"dry_run": True}).json()
        # search-v2 was changed outside only in its description: metadata is no conflict.
        assert {f["flag"]: f["outcome"] for f in dry["flags"]} == {pricing: "restore", search: "restore",
                                                                   ranking: "conflict"}
        assert api.get(f"/api/v1/flags/{pricing}").json()["version"] == 2  # a dry run changes nothing

        done = api.post(f"/api/v1/incidents/{incident}/rollback", json={}).json()
        assert [c["flag"] for c in done["conflicts"]] == [ranking]
        restored = api.get(f"/api/v1/flags/{pricing}").json()
        assert restored["spec"]["environments"]["production"]["enabled"] is True
        kept = api.get(f"/api/v1/flags/{search}").json()
        assert kept["spec"]["description"] == "tuned by the search team"  # the newer metadata stays
        assert kept["spec"]["environments"]["production"]["enabled"] is True  # the behaviour is restored
        assert api.get(f"/api/v1/flags/{ranking}").json()["spec"]["environments"]["production"]["enabled"] is False
        forced = api.post(f"/api/v1/incidents/{incident}/rollback", json={"force": True}).json()
        assert forced["conflicts"] == [] and {f["flag"]: f["outcome"] for f in forced["flags"]}[ranking] == "restore"
        assert api.get(f"/api/v1/flags/{ranking}").json()["spec"]["environments"]["production"]["enabled"] is True
        overrides = api.get("/api/v1/loglevels", params={"service": "checkout"}).json()
        assert not [o for o in overrides if o.get("incident_id") == incident and not o.get("ended_at")]

        report = api.get(f"/api/v1/incidents/{incident}/report").text
        assert f"# {incident}: Checkout errors" in report and "`triage`" in report and pricing in report
        found = report.index("## What was found")
        assert "| error | " in report[found:] and "checkout answers 500 to one request in three" in report[found:]
        assert f"killed flag {pricing} in production for 30m" in report
        assert "{'" not in report and "headers" not in report  # prose and tables, never raw dicts
        events = api.get("/api/v1/audit", params={"incident_id": incident, "action": "incident.rollback"}).json()
        assert len(events["items"]) == 2 and {e["source"] for e in events["items"]} == {"api"}  # plain, then --force


def test_mattermost_run_posts_its_summary(e2e):
    url, receiver = e2e
    reply = mattermost(url, "run triage", response_url=f"{receiver.url}/mm-hook").json()
    assert reply["response_type"] == "in_channel", reply
    run_id = int(reply["text"].split("#")[1].split()[0])
    wait_for(lambda: any(f"Run #{run_id}" in t for t in receiver.texts("/mm-hook")), 45, "the Mattermost summary")


def test_approval_buttons_are_posted_and_work(e2e):
    url, receiver = e2e
    slack = Slack(url)
    reply = slack.command("run gated", response_url=f"{receiver.url}/gated").json()
    run_id = int(reply["text"].split("#")[1].split()[0])
    wait_for(lambda: any(b.get("blocks") for p, b in receiver.received if p == "/gated"), 45, "approval buttons")
    blocks = next(b["blocks"] for p, b in receiver.received if p == "/gated" and b.get("blocks"))
    approve = next(e for e in blocks[1]["elements"] if e["action_id"] == "approve")
    prompt = blocks[0]["text"]["text"]  # what the step will run, before anyone clicks
    assert "It will run `log`" in prompt and '"message": "fixed"' in prompt, prompt
    payload = {"type": "block_actions", "user": {"id": "UOPS", "team_id": TEAM}, "team": {"id": TEAM},
               "channel": {"id": "CGENERAL"}, "response_url": f"{receiver.url}/gated",
               "actions": [{"action_id": "approve", "value": approve["value"]}]}
    from urllib.parse import urlencode

    clicked = slack.signed("/chat/slack/actions", urlencode({"payload": json.dumps(payload)}).encode())
    assert clicked.status_code == 200 and "approved by slack:" in clicked.json()["text"], clicked.text
    wait_for(lambda: any(f"Run #{run_id}" in t and "succeeded" in t for t in receiver.texts("/gated")), 45,
             "the gated run to finish after the button")
