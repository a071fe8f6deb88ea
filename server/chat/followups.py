"""Post what happened to runs started from chat: approval buttons while they wait, a summary when they end.

Beat calls post_due() every couple of seconds. Posting is a real HTTP POST to the platform's response_url;
it is at-least-once (a crash between the POST and the commit posts again), and gives up after MAX_ATTEMPTS.
"""

from __future__ import annotations

import logging

import httpx
from sqlalchemy import Engine
from sqlmodel import col, select

from server.chat.models import ChatFollowup
from server.chat.replies import Reply, approval_blocks, approval_details, run_summary
from server.db import session_scope
from server.models_base import utcnow
from server.runs import service as runs
from server.runs.models import Run, RunStatus
from server.settings import Settings

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


def _post(client: httpx.Client, url: str, reply: Reply) -> str | None:
    try:
        response = client.post(url, json=reply.body())
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None if response.status_code < 300 else f"HTTP {response.status_code}: {response.text[:200]}"


def post_due(engine: Engine, settings: Settings, *, limit: int = 100) -> int:
    """Post every due approval prompt and final summary; returns how many messages went out."""
    sent = 0
    with session_scope(engine) as session, httpx.Client(timeout=5) as client:
        rows = session.exec(select(ChatFollowup, Run).join(Run, col(Run.id) == ChatFollowup.run_id)
                            .where(col(ChatFollowup.finished_posted_at).is_(None))
                            .order_by(col(ChatFollowup.id)).limit(limit)).all()
        for follow, run in rows:
            assert run.id is not None
            url = f"{settings.effective_public_url}/api/v1/runs/{run.id}"
            steps = runs.steps_of(session, run_id=run.id)
            announced = set(filter(None, follow.approvals_posted.split(",")))
            replies: list[tuple[str | None, Reply]] = []
            if run.status == RunStatus.waiting_approval:
                for step in steps:
                    if step.approval == "waiting" and step.step_id not in announced:
                        text = (f":raised_hand: Run #{run.id} `{run.runbook_id}` waits for approval of step "
                                f"`{step.step_id}`{f' [{step.phase}]' if step.phase else ''}. "
                                f"Approve or reject, or `/{settings.chat_command} approve {run.id} {step.step_id}`.")
                        text += approval_details(step.outputs)
                        replies.append((step.step_id, Reply(text, public=True,
                                                            blocks=approval_blocks(run.id, step.step_id, text))))
            elif run.status.finished:
                replies.append((None, Reply(run_summary(run, steps, url), public=True)))
            for step_id, reply in replies:
                error = _post(client, follow.response_url, reply)
                if error:
                    follow.attempts += 1
                    follow.last_error = error
                    log.warning("chat follow-up not posted", extra={"run_id": run.id, "error": error,
                                                                     "attempt": follow.attempts})
                    if follow.attempts >= MAX_ATTEMPTS:
                        follow.finished_posted_at = utcnow()  # give up: the run page still has it all
                    break
                sent += 1
                if step_id is None:
                    follow.finished_posted_at = utcnow()
                else:
                    announced.add(step_id)
                    follow.approvals_posted = ",".join(sorted(announced))
            session.add(follow)
    return sent
