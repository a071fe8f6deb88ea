"""Alerts: the deliveries alert and webhook triggers received, and each alert's outcome with its reason
(server.hooks). Read-only; it calls the REST API's own route functions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from server.db import SessionDep
from server.hooks import routes as hooks_api
from server.ids import PathId
from server.ui.render import page
from server.ui.session import UiViewer

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/hooks")
def deliveries_page(request: Request, session: SessionDep, actor: UiViewer,
                    source: Annotated[str | None, Query(max_length=120)] = None,
                    cursor: Annotated[str | None, Query(max_length=20)] = None) -> Response:
    deliveries = hooks_api.list_deliveries(session, actor, source or None, cursor, 50)
    triggers = hooks_api.list_triggers(request, actor)
    return page(request, "hooks.html", {"page": deliveries, "source": source or "", "triggers": triggers})


@router.get("/hooks/{delivery_id}")
def delivery_page(delivery_id: PathId, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    return page(request, "hook.html", {"d": hooks_api.get_delivery(delivery_id, session, actor)})
