"""A live api with Slack and Mattermost configured, and clients that sign requests exactly as Slack does."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier

from server.app import create_app
from server.auth.models import Role
from tests.support import serve

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
MATTERMOST_TOKEN = "mm-command-token-1"
TEAM = "T024BE7LD"


@pytest.fixture(scope="module")
def chat_settings(settings):
    return settings.model_copy(update={
        "slack_signing_secret": SecretStr(SLACK_SECRET),
        "mattermost_token": SecretStr(MATTERMOST_TOKEN),
        "chat_users": {f"slack:{TEAM}/UOPS": Role.operator, f"mattermost:{TEAM}/mmops": Role.operator},
        "chat_channels": {f"slack:{TEAM}/CWAR": Role.operator},
        "chat_channel_allowlist": [f"slack:{TEAM}/CGENERAL", f"slack:{TEAM}/CWAR", f"mattermost:{TEAM}/town"],
    })


@pytest.fixture(scope="module")
def chat_url(chat_settings):
    with serve(create_app(chat_settings)) as url:
        yield url


class Slack:
    """Posts slash commands and button clicks signed with slack_sdk, as Slack's servers do."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.signer = SignatureVerifier(SLACK_SECRET)

    def signed(self, path: str, body: bytes, *, timestamp: int | None = None, signature: str | None = None,
               unsigned: bool = False) -> httpx.Response:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": signature or self.signer.generate_signature(timestamp=ts, body=body)}
        if unsigned:
            del headers["X-Slack-Signature"]
        return httpx.post(self.base_url + path, content=body, headers=headers, timeout=30)

    def command(self, text: str, *, user: str = "UOPS", channel: str = "CGENERAL",
                response_url: str = "", **kw: object) -> httpx.Response:
        form = {"token": "deprecated", "team_id": TEAM, "team_domain": "acme", "channel_id": channel,
                "channel_name": "general", "user_id": user, "user_name": "someone", "command": "/rb",
                "text": text, "response_url": response_url, "trigger_id": uuid.uuid4().hex}
        return self.signed("/chat/slack/commands", urlencode(form).encode(), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def slack(chat_url):
    return Slack(chat_url)


def mattermost(chat_url: str, text: str, *, user: str = "mmops", channel: str = "town",
               token: str = MATTERMOST_TOKEN, response_url: str = "") -> httpx.Response:
    form = {"token": token, "team_id": TEAM, "channel_id": channel, "user_id": user, "user_name": "mm",
            "command": "/rb", "text": text, "response_url": response_url}
    return httpx.post(chat_url + "/chat/mattermost/commands", data=form, timeout=30)
