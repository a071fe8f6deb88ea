"""Receivers (/hooks/alertmanager, /hooks/generic/NAME) and what they did (/api/v1/hooks/deliveries,
/api/v1/triggers, /api/v1/triggers/test).

A delivery is answered 200 only after everything it decided is committed; refused ones get 401 and write
nothing, oversized ones 413. Runs are sent to the broker after the commit; with the broker down they stay
queued and beat's relay sends them later, as for API runs.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from server.auth.models import Actor
from server.context import request_id_var
from server.db import SessionDep
from server.deps import EngineDep, Operator, RedisDep, SettingsDep, Viewer, hook_actor, settings_of
from server.errors import InvalidInput, PayloadTooLarge, Unauthorized
from server.hooks import payloads, security, service
from server.hooks import rules as rules_mod
from server.hooks.models import DeliveryPage, DeliveryPublic, TriggerTestRequest
from server.ids import PathId
from server.runbooks import service as runbooks
from server.settings import Settings

router = APIRouter(tags=["hooks"])
log = logging.getLogger("runbookd.hooks")


async def _body(request: Request, settings: Settings) -> bytes:
    limit = settings.hook_max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"delivery is {length} bytes; hooks accept at most {limit} "
                              "(RUNBOOKD_HOOK_MAX_BODY_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"delivery is over {limit} bytes; hooks accept at most {limit} "
                                  "(RUNBOOKD_HOOK_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def _rules(settings: Settings) -> tuple[rules_mod.RuleSet, Any]:
    snapshot = runbooks.store_for(settings.runbooks_dir).snapshot()
    return rules_mod.rules_for(settings.runbooks_dir, snapshot), snapshot


def deliver(engine: Any, settings: Settings, client: redis.Redis | None, delivery: payloads.Delivery, *,
            token: str | None, request_id: str | None) -> dict[str, Any]:
    rules, snapshot = _rules(settings)
    return service.deliver(engine, settings, delivery, rules=rules, runbooks=snapshot.runbooks, token=token,
                           request_id=request_id, client=client)


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/hooks/alertmanager")
async def alertmanager(request: Request, settings: SettingsDep, engine: EngineDep, client: RedisDep,
                       actor: Annotated[Actor, Depends(hook_actor)]) -> JSONResponse:
    """Prometheus Alertmanager's webhook (version 4), authenticated by a bearer token of the hook role (or
    operator, admin): `http_config: {authorization: {credentials: TOKEN}}` in the receiver."""
    body = await _body(request, settings)
    delivery = payloads.alertmanager(body)
    result = await run_in_threadpool(deliver, engine, settings, client, delivery,
                                     token=actor.name, request_id=request_id_var.get())
    return JSONResponse(result)


@router.post("/hooks/generic/{name}")
async def generic(name: str, request: Request, settings: SettingsDep, client: RedisDep, engine: EngineDep
                  ) -> JSONResponse:
    """Any JSON document. Signed (X-Runbookd-Timestamp, X-Runbookd-Signature: v0=HMAC-SHA256 of
    `v0:TIMESTAMP:BODY` with the hook's secret), or with a bearer token of the hook role."""
    signature = request.headers.get(security.SIGNATURE_HEADER)
    timestamp = request.headers.get(security.TIMESTAMP_HEADER)
    token = None
    if signature or timestamp or not (request.headers.get("authorization") or request.headers.get("x-api-key")):
        body = await _body(request, settings)
        security.verify_signature(settings, client, name=name, body=body, timestamp=timestamp,
                                  signature=signature, remote=_remote(request))
    else:
        actor = await hook_actor(request)
        rules, _snapshot = _rules(settings)
        if name not in settings.hook_secrets and f"generic:{name}" not in rules.sources():
            raise Unauthorized(f"no hook {name!r}: no trigger rule has source: generic:{name} and "
                               "RUNBOOKD_HOOK_SECRETS does not name it")
        token = actor.name
        body = await _body(request, settings)
    delivery = payloads.generic(name, body, delivery_id=request.headers.get("idempotency-key"))
    result = await run_in_threadpool(deliver, engine, settings, client, delivery, token=token,
                                     request_id=request_id_var.get())
    return JSONResponse(result)


@router.get("/api/v1/hooks/deliveries", response_model=DeliveryPage)
def list_deliveries(session: SessionDep, _actor: Viewer,
                    source: Annotated[str | None, Query(max_length=120)] = None,
                    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
                    limit: Annotated[int, Query(ge=1, le=200)] = 20) -> DeliveryPage:
    if cursor is not None and not cursor.isdigit():
        raise InvalidInput("cursor must be the next_cursor of a previous page",
                           details=[{"field": "cursor", "message": "not a cursor"}])
    rows = service.list_deliveries(session, source=source, before_id=int(cursor) if cursor else None,
                                   limit=limit + 1)
    page = rows[:limit]
    return DeliveryPage(items=[DeliveryPublic.model_validate(r, from_attributes=True) for r in page],
                        next_cursor=str(page[-1].id) if len(rows) > limit else None)


@router.get("/api/v1/hooks/deliveries/{delivery_id}", response_model=DeliveryPublic)
def get_delivery(delivery_id: PathId, session: SessionDep, _actor: Viewer) -> DeliveryPublic:
    return DeliveryPublic.model_validate(service.get_delivery(session, delivery_id=delivery_id),
                                         from_attributes=True)


@router.get("/api/v1/triggers")
def list_triggers(request: Request, _actor: Viewer) -> dict[str, Any]:
    """The loaded trigger rules and the problems of those that were skipped."""
    # request, not SettingsDep: the console calls this function with its own arguments.
    rules, _snapshot = _rules(settings_of(request))
    return {"rules": [r.describe() | {"status": r.spec.status, "schedule": r.spec.schedule.model_dump()
                                      if r.spec.schedule else None} for r in rules.rules],
            "problems": [p.as_dict() for p in rules.problems]}


@router.post("/api/v1/triggers/test")
def test_triggers(body: TriggerTestRequest, settings: SettingsDep, _actor: Operator) -> dict[str, Any]:
    """Which rules a sample payload matches and which runs would start, with their params; creates nothing."""
    loaded, snapshot = _rules(settings)
    if body.rules is not None:
        loaded = rules_mod.check_rules(body.rules, "rules.yaml", runbooks=snapshot.runbooks)
        if loaded.errors:
            raise InvalidInput(f"the rules are invalid: {len(loaded.errors)} error(s); first: {loaded.errors[0]}",
                               details=[p.as_dict() for p in loaded.errors])
    return test_payload(body.source, body.payload, loaded, snapshot.runbooks)


def test_payload(source: str, payload: dict[str, Any], loaded: rules_mod.RuleSet, known: Any) -> dict[str, Any]:
    import orjson

    raw = orjson.dumps(payload)
    if source == "alertmanager":
        delivery = payloads.alertmanager(raw)
    elif source.startswith("generic:"):
        delivery = payloads.generic(source.removeprefix("generic:"), raw)
    else:
        raise InvalidInput(f"source must be alertmanager or generic:NAME, not {source!r}",
                           details=[{"field": "source", "message": "unknown source"}])
    results = service.dry_run(delivery, loaded, known)
    would = sum(1 for r in results for x in r["rules"] if x.get("would_start"))
    return {"source": source, "alerts": len(delivery.alerts), "would_start": would, "results": results,
            "problems": [p.as_dict() for p in loaded.problems]}
