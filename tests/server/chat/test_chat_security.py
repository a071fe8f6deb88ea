"""Only Slack's signed, fresh, first-seen requests and Mattermost's token get through; roles hold in chat."""

from __future__ import annotations

import time

from tests.server.chat.conftest import MATTERMOST_TOKEN, mattermost


def test_signed_request_is_answered(slack):
    response = slack.command("help")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response_type"] == "ephemeral"
    assert "/rb run RUNBOOK" in body["text"]


def test_forged_unsigned_stale_and_replayed_requests_get_401(slack):
    forged = slack.command("help", signature="v0=" + "0" * 64)
    assert forged.status_code == 401 and "signature does not match" in forged.json()["error"]["message"]

    unsigned = slack.signed("/chat/slack/commands", b"text=help", unsigned=True)
    assert unsigned.status_code == 401 and "missing" in unsigned.json()["error"]["message"]

    stale = slack.command("help", timestamp=int(time.time()) - 6 * 60)
    assert stale.status_code == 401 and "5 minutes" in stale.json()["error"]["message"]

    body = b"team_id=T024BE7LD&user_id=UOPS&channel_id=CGENERAL&text=help"
    ts = int(time.time())
    first = slack.signed("/chat/slack/commands", body, timestamp=ts)
    again = slack.signed("/chat/slack/commands", body, timestamp=ts)
    assert first.status_code == 200
    assert again.status_code == 401 and "replay" in again.json()["error"]["message"]


def test_a_timestamp_from_the_future_is_refused_as_such(slack):
    # A clock six minutes ahead (or a request signed for later replay) is as far away as a stale one.
    ahead = slack.command("help", timestamp=int(time.time()) + 6 * 60)
    assert ahead.status_code == 401 and "5 minutes" in ahead.json()["error"]["message"], ahead.text
    within = slack.command("help", timestamp=int(time.time()) + 4 * 60)
    assert within.status_code == 200, within.text


def test_tampered_body_with_a_valid_old_signature_is_refused(slack):
    ts = int(time.time())
    signature = slack.signer.generate_signature(timestamp=str(ts), body=b"text=flags")
    tampered = slack.signed("/chat/slack/commands", b"text=flag+new-pricing+off", timestamp=ts, signature=signature)
    assert tampered.status_code == 401


def test_mattermost_token(chat_url):
    assert mattermost(chat_url, "help").status_code == 200
    wrong = mattermost(chat_url, "help", token=MATTERMOST_TOKEN + "x")
    assert wrong.status_code == 401 and "token does not match" in wrong.json()["error"]["message"]


def test_channel_allowlist_and_roles(slack):
    outside = slack.command("help", channel="CRANDOM").json()
    assert outside["response_type"] == "ephemeral" and "not accepted from channel" in outside["text"]
    # An unmapped user is a viewer: may read, may not change.
    viewer = slack.command("flag some-flag off", user="UNOBODY").json()
    assert "needs the operator role" in viewer["text"] and "slack:T024BE7LD/UNOBODY has viewer" in viewer["text"]
    # The war-room channel makes everyone in it an operator.
    war_room = slack.command("incident open \"Pager storm\" sev3", user="UNOBODY", channel="CWAR").json()
    assert war_room["response_type"] == "in_channel" and "opened (sev3)" in war_room["text"]


def test_mistakes_answer_with_the_usage_and_change_nothing(slack, base_url, admin_token):
    import httpx

    before = httpx.get(f"{base_url}/api/v1/audit", headers={"Authorization": f"Bearer {admin_token}"}).json()
    reply = slack.command("loglevel checkout app.db DEBUG").json()
    assert reply["response_type"] == "ephemeral"
    assert "give service, logger, level and `for`" in reply["text"]
    assert "Usage: `/rb loglevel SERVICE LOGGER LEVEL for 15m" in reply["text"]
    after = httpx.get(f"{base_url}/api/v1/audit", headers={"Authorization": f"Bearer {admin_token}"}).json()
    assert after["items"][0]["id"] == before["items"][0]["id"]
