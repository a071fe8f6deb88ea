"""What alert and schedule triggers remember: each delivery as received and decided, each trigger firing
(the idempotency record that makes a redelivery start nothing twice), the incident of each alert group, and
the last slot of each schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from server.models_base import UTCDateTime, json_field, ts_field


class HookDelivery(SQLModel, table=True):
    """One delivery (an Alertmanager POST, a generic webhook, a schedule tick that did something): what it
    carried and what was decided for each alert. Written in the same transaction as the runs it started."""

    __tablename__ = "hook_deliveries"
    __table_args__ = (Index("ix_hook_deliveries_source_id", "source", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = ts_field(default_now=True, index=True)
    source: str = Field(max_length=120)          # alertmanager, generic:NAME, schedule
    actor: str = Field(max_length=200)           # hook:<source>
    token: str | None = Field(default=None, max_length=100)  # the token's name; None when HMAC-signed
    request_id: str | None = Field(default=None, max_length=64)
    group_key: str | None = Field(default=None, max_length=1000)
    alerts: int = 0
    started: int = 0
    duplicates: int = 0
    suppressed: int = 0
    ignored: int = 0
    # {"alerts": [...trimmed alerts...], "decisions": [...one per alert x rule...], "rules": [...matched ids...]}
    result: dict[str, Any] = json_field(default=None, nullable=False)


class TriggerFiring(SQLModel, table=True):
    """A rule acting on one alert (or one schedule slot). `key` is unique: a redelivery, a second beat or a
    concurrent copy of the same delivery finds it and acts no more."""

    __tablename__ = "trigger_firings"
    __table_args__ = (Index("ix_trigger_firings_rule_fp", "rule_id", "fingerprint", "id"),
                      Index("ix_trigger_firings_rule_created", "rule_id", "created_at"))

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=80, unique=True)  # sha256 of rule, group key, fingerprint, startsAt, action
    action: str = Field(max_length=20)           # run, resolved, slot
    rule_id: str = Field(max_length=200)
    fingerprint: str = Field(max_length=200)
    group_key: str | None = Field(default=None, max_length=1000)
    group_hash: str = Field(max_length=64, index=True)  # a redelivery's firings are found by its group
    starts_at: str | None = Field(default=None, max_length=64)
    delivery_id: int | None = Field(default=None, index=True)
    run_id: int | None = Field(default=None, index=True)
    incident_id: str | None = Field(default=None, max_length=64)
    outcome: str = Field(max_length=40)          # started, note, resolve_incident, cancel_run, skipped
    created_at: datetime = ts_field(default_now=True)


class TriggerGroup(SQLModel, table=True):
    """The incident a rule opened for an alert group, reused while it is not resolved."""

    __tablename__ = "trigger_groups"
    __table_args__ = (Index("ix_trigger_groups_rule_group", "rule_id", "group_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    rule_id: str = Field(max_length=200)
    group_hash: str = Field(max_length=64)
    incident_id: str = Field(max_length=64)
    created_at: datetime = ts_field(default_now=True)


class ScheduleState(SQLModel, table=True):
    """The last slot a schedule rule has dealt with (started, or skipped as missed)."""

    __tablename__ = "trigger_schedules"

    rule_id: str = Field(primary_key=True, max_length=200)
    last_slot: datetime = ts_field()
    updated_at: datetime = ts_field(default_now=True)


class DeliveryPublic(BaseModel):
    id: int
    received_at: UTCDateTime
    source: str
    actor: str
    token: str | None
    request_id: str | None
    group_key: str | None
    alerts: int
    started: int
    duplicates: int
    suppressed: int
    ignored: int
    result: dict[str, Any]


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None


class TriggerTestRequest(BaseModel):
    model_config = {"extra": "forbid"}

    source: str = PydanticField("alertmanager", max_length=120,
                                description="alertmanager or generic:NAME: which receiver the payload is for.")
    payload: dict[str, Any] = PydanticField(description="A sample delivery: Alertmanager's JSON or any JSON.")
    rules: str | None = PydanticField(None, max_length=256 * 1024,
                                      description="YAML of trigger rules to test instead of the loaded ones.")
