"""What arrives at the receivers, as alerts: Alertmanager's webhook (version 4) and any JSON document."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import InvalidInput

MAX_ALERTS = 10_000


class AmAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = ""


class AmPayload(BaseModel):
    """https://prometheus.io/docs/alerting/latest/configuration/#webhook_config"""

    model_config = ConfigDict(extra="ignore")

    version: str
    groupKey: str = Field(max_length=10_000)
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AmAlert] = Field(max_length=MAX_ALERTS)


@dataclass
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    fingerprint: str
    starts_at: str
    ends_at: str = ""
    generator_url: str = ""

    def context(self) -> dict[str, Any]:
        return {"status": self.status, "labels": self.labels, "annotations": self.annotations,
                "fingerprint": self.fingerprint, "startsAt": self.starts_at, "endsAt": self.ends_at,
                "generatorURL": self.generator_url}

    def brief(self) -> dict[str, Any]:
        return {"status": self.status, "fingerprint": self.fingerprint, "startsAt": self.starts_at,
                "labels": self.labels}


@dataclass
class Delivery:
    source: str               # alertmanager, generic:NAME
    group_key: str
    alerts: list[Alert]
    payload: dict[str, Any] = field(default_factory=dict)  # what templates see as `payload`
    truncated: int = 0

    def template_context(self, alert: Alert) -> dict[str, Any]:
        return {"alert": alert.context(), "payload": self.payload, "slot": alert.starts_at,
                "delivery": {"source": self.source, "group_key": self.group_key}}


def _fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not JSON: {exc}") from None


def alertmanager(body: bytes) -> Delivery:
    try:
        payload = AmPayload.model_validate_json(body)  # pydantic-core parses and checks in one pass
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            _json(body)  # raises with the parser's own message
        details = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()[:20]]
        first = details[0] if details else {"field": "", "message": "invalid"}
        raise InvalidInput(f"not an Alertmanager webhook payload: {first['field']}: {first['message']}",
                           details=details) from None
    if payload.version != "4":
        raise InvalidInput(f"Alertmanager webhook version {payload.version!r} is not supported; runbookd reads "
                           "version 4", details=[{"field": "version", "message": "expected \"4\""}])
    alerts = [Alert(a.status, a.labels, a.annotations, a.fingerprint or _fingerprint(a.labels), a.startsAt,
                    a.endsAt, a.generatorURL) for a in payload.alerts]
    context = {"groupKey": payload.groupKey, "status": payload.status, "receiver": payload.receiver,
               "groupLabels": payload.groupLabels, "commonLabels": payload.commonLabels,
               "commonAnnotations": payload.commonAnnotations, "externalURL": payload.externalURL}
    return Delivery("alertmanager", payload.groupKey, alerts, context, payload.truncatedAlerts)


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    return None


def generic(name: str, body: bytes, *, delivery_id: str | None = None) -> Delivery:
    """Any JSON object is one alert: its labels are its scalar top-level fields plus a `labels` object, its
    annotations an `annotations` object, its status `status` when that is firing or resolved. Its fingerprint
    is `fingerprint`, else a hash of the body, so the same document delivered twice starts one run."""
    data = _json(body)
    if not isinstance(data, dict):
        raise InvalidInput(f"a generic hook takes a JSON object, not a {type(data).__name__}")
    labels = {k: v for k, raw in data.items() if (v := _scalar(raw)) is not None}
    if isinstance(data.get("labels"), dict):
        labels.update({k: v for k, raw in data["labels"].items() if (v := _scalar(raw)) is not None})
    annotations = {k: v for k, raw in (data.get("annotations") or {}).items()
                   if (v := _scalar(raw)) is not None} if isinstance(data.get("annotations"), dict) else {}
    status = data.get("status") if data.get("status") in ("firing", "resolved") else "firing"
    body_hash = hashlib.sha256(body).hexdigest()[:32]
    fingerprint = _scalar(data.get("fingerprint")) or body_hash
    starts_at = delivery_id or _scalar(data.get("startsAt")) or ("" if data.get("fingerprint") else body_hash)
    group = _scalar(data.get("group")) or fingerprint
    alert = Alert(str(status), labels, annotations, fingerprint[:200], starts_at[:64])
    return Delivery(f"generic:{name}", f"generic:{name}:{group}", [alert], data)
