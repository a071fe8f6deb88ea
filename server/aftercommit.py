"""Work that must follow a commit, registered where the change is made: `on_commit(session, fn)`.

Every domain that announces a change to other processes (a flag's new version, a log-level override, a
revoked token) registers the announcement with on_commit while it makes the change. It runs once the
session's transaction commits, and is dropped when the transaction rolls back or the session closes
without a commit, so nobody hears of a change that did not happen, and no caller can forget to announce.
Built on SQLAlchemy's session events (after_commit, after_transaction_end).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger("runbookd.aftercommit")
_KEY = "runbookd.after_commit"


def on_commit(session: Session, fn: Callable[[], Any]) -> None:
    """Call fn() after the session's current transaction commits; never if it rolls back."""
    session.info.setdefault(_KEY, []).append(fn)


def pending(session: Session) -> int:
    """How many calls wait for the session's commit (for tests)."""
    return len(session.info.get(_KEY, ()))


@event.listens_for(Session, "after_commit")
def _run(session: Session) -> None:
    for fn in session.info.pop(_KEY, []):
        try:
            fn()
        except Exception:  # the change is committed: a failed announcement must not turn it into an error
            log.exception("after-commit call failed", extra={"call": getattr(fn, "__qualname__", repr(fn))})


@event.listens_for(Session, "after_transaction_end")
def _drop(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended without a commit (a commit ran them first)
        session.info.pop(_KEY, None)
