"""The one check of a Slack-style v0 signature (HMAC-SHA256 of `v0:{timestamp}:{body}`, slack_sdk's), used by
the Slack endpoints (server.chat.security) and signed generic webhooks (server.hooks.security)."""

from __future__ import annotations

import time
from typing import Literal

from slack_sdk.signature import SignatureVerifier

from server.ids import is_id


def signature_problem(secret: str, *, body: bytes, timestamp: str, signature: str, max_age: float,
                      now: float | None = None) -> Literal["stale", "mismatch"] | None:
    """None when signed with secret within max_age seconds of now (either way); else what is wrong. The
    timestamp must be ASCII digits: str.isdigit() also takes '²', which int() then refuses."""
    current = time.time() if now is None else now
    if not is_id(timestamp) or abs(current - int(timestamp)) > max_age:
        return "stale"
    if not SignatureVerifier(secret).is_valid(body=body, timestamp=timestamp, signature=signature):
        return "mismatch"
    return None
