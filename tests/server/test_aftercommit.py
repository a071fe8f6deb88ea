"""on_commit: work registered with a change runs once its transaction commits, and never if it does not."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from server.aftercommit import on_commit, pending
from server.auth.models import Actor, Role, Source
from server.auth.service import create_token, revoke_token

ADMIN = Actor(name="aftercommit-test", role=Role.admin, source=Source.system)


def test_runs_after_the_commit_with_the_change_visible_to_others(engine: Engine):
    seen: list[bool] = []
    with Session(engine) as session:
        token, _raw = create_token(session, name="ac-commit", role=Role.viewer, actor=ADMIN)
        token_id = token.id

        def check() -> None:  # another session sees the committed row by the time we run
            with Session(engine) as other:
                seen.append(other.get(type(token), token_id) is not None)

        on_commit(session, check)
        assert seen == []
        session.commit()
    assert seen == [True]


def test_dropped_on_rollback_and_on_close_without_commit(engine: Engine):
    calls: list[str] = []
    with Session(engine) as session:
        create_token(session, name="ac-rollback", role=Role.viewer, actor=ADMIN)
        on_commit(session, lambda: calls.append("rolled back"))
        session.rollback()
        assert pending(session) == 0
        session.commit()  # a later commit must not run what belonged to the rolled-back transaction
    with Session(engine) as session:
        create_token(session, name="ac-closed", role=Role.viewer, actor=ADMIN)
        on_commit(session, lambda: calls.append("closed"))
    assert calls == []


def test_a_failing_call_does_not_undo_the_commit_nor_stop_the_others(engine: Engine):
    calls: list[str] = []

    def boom() -> None:
        raise RuntimeError("publish failed")

    with Session(engine) as session:
        create_token(session, name="ac-boom", role=Role.viewer, actor=ADMIN)
        on_commit(session, boom)
        on_commit(session, lambda: calls.append("second"))
        session.commit()
    assert calls == ["second"]
    with Session(engine) as session:
        revoke_token(session, ref="ac-boom", actor=ADMIN)  # it was committed
        session.commit()


def test_each_commit_runs_only_its_own_calls(engine: Engine):
    calls: list[int] = []
    with Session(engine) as session:
        create_token(session, name="ac-first", role=Role.viewer, actor=ADMIN)
        on_commit(session, lambda: calls.append(1))
        session.commit()
        create_token(session, name="ac-second", role=Role.viewer, actor=ADMIN)
        on_commit(session, lambda: calls.append(2))
        session.commit()
    assert calls == [1, 2]
