"""Feature flags: the live row, its immutable versions, pending expiries of temporary changes, environments.

A flag's whole configuration is one JSON snapshot (see FlagSpec). Versions store full snapshots, so a
rollback or an expiry is "write a new version equal to snapshot N", and the evaluation cache can rebuild
a flag from one row.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from server import saferegex
from server.durations import Duration
from server.models_base import UTCDateTime, json_field, ts_field

KEY_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
ENV_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DEFAULT_ENVIRONMENTS = ("production", "staging")


class FlagType(StrEnum):
    boolean = "boolean"
    string = "string"
    number = "number"
    object = "object"


class Operator(StrEnum):
    equals = "equals"
    not_equals = "not_equals"
    in_ = "in"
    not_in = "not_in"
    contains = "contains"
    starts_with = "starts_with"
    ends_with = "ends_with"
    matches = "matches"
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"
    semver_eq = "semver_eq"
    semver_gt = "semver_gt"
    semver_gte = "semver_gte"
    semver_lt = "semver_lt"
    semver_lte = "semver_lte"


class ExpiryStatus(StrEnum):
    pending = "pending"
    applied = "applied"        # the flag went back to revert_to
    superseded = "superseded"  # a later change replaced the temporary one; nothing to revert
    cancelled = "cancelled"


# -- the configuration snapshot --------------------------------------------------------------------
class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: str = PydanticField(min_length=1, max_length=200)
    operator: Operator
    value: Any

    @model_validator(mode="after")
    def _value_fits_operator(self) -> Condition:
        if self.operator in (Operator.in_, Operator.not_in) and not isinstance(self.value, list):
            raise ValueError(f"operator {self.operator.value!r} needs a list value")
        if self.operator == Operator.matches:
            try:
                saferegex.compile(str(self.value))
            except saferegex.InvalidPattern as exc:
                raise ValueError(str(exc)) from None
        if self.operator.value.startswith("semver_"):
            import semver

            if not isinstance(self.value, str) or not semver.Version.is_valid(self.value.removeprefix("v")):
                raise ValueError(f"{self.value!r} is not a semantic version like 1.4.2")
        if self.operator in (Operator.gt, Operator.gte, Operator.lt, Operator.lte) and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError(f"operator {self.operator.value!r} needs a number")
        return self


class SplitPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: str
    weight: float = PydanticField(ge=0, le=100, description="percent, 0.1 resolution")


class Rule(BaseModel):
    """All conditions must hold (an empty list matches everyone); then serve a variant or a split."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = PydanticField(default=None, max_length=200)
    conditions: list[Condition] = PydanticField(default_factory=list)
    variant: str | None = None
    split: list[SplitPart] | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> Rule:
        if (self.variant is None) == (self.split is None):
            raise ValueError("a rule serves either a variant or a split, exactly one of them")
        if self.split is not None:
            permille = [round(p.weight * 10) for p in self.split]
            if any(abs(p.weight * 10 - pm) > 1e-6 for p, pm in zip(self.split, permille, strict=True)):
                raise ValueError("split weights have a resolution of 0.1 percent")
            if sum(permille) != 1000:
                raise ValueError(f"split weights must add up to 100, not {sum(permille) / 10:g}")
        return self


class EnvironmentState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    default_variant: str | None = None  # None: the flag's default_variant
    rules: list[Rule] = PydanticField(default_factory=list)


class FlagSpec(BaseModel):
    """The versioned configuration of one flag."""

    model_config = ConfigDict(extra="forbid")

    key: str = PydanticField(pattern=KEY_PATTERN)
    description: str = PydanticField(default="", max_length=2000)
    type: FlagType
    variants: dict[str, Any] = PydanticField(min_length=1)
    default_variant: str
    off_variant: str | None = PydanticField(
        default=None, description="served wherever the flag is disabled (a kill switch); a boolean flag defaults "
                                  "to its variant whose value is false, other types must name it")
    environments: dict[str, EnvironmentState] = PydanticField(default_factory=dict)
    tags: list[str] = PydanticField(default_factory=list)
    owner: str | None = PydanticField(default=None, max_length=200)
    temporary: bool = False
    remove_after: date | None = None
    deleted: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> FlagSpec:
        for name, value in self.variants.items():
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
                raise ValueError(f"variant name {name!r} must be letters, digits, '.', '_' or '-'")
            if not _fits(self.type, value):
                raise ValueError(f"variant {name!r} value {value!r} is not of the flag's type {self.type.value}")
        known = set(self.variants)
        if self.off_variant is None:
            self.off_variant = default_off_variant(self.type, self.variants)
        wanted = [("default_variant", self.default_variant), ("off_variant", self.off_variant)]
        for env_name, env in self.environments.items():
            if not re.match(ENV_PATTERN, env_name):
                raise ValueError(f"environment name {env_name!r} is invalid")
            if env.default_variant is not None:
                wanted.append((f"environments.{env_name}.default_variant", env.default_variant))
            for i, rule in enumerate(env.rules):
                where = f"environments.{env_name}.rules[{i}]"
                wanted += [(where, rule.variant)] if rule.variant else [(where, p.variant) for p in rule.split or []]
        unknown = [f"{where}: {name!r}" for where, name in wanted if name not in known]
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; variants are {sorted(known)}")
        if self.temporary and self.remove_after is None:
            raise ValueError("a temporary flag needs remove_after, the date it is expected to be removed")
        return self


def default_off_variant(flag_type: FlagType, variants: dict[str, Any]) -> str:
    """The variant a flag serves when disabled, when none is named: a boolean flag's `false` variant."""
    if flag_type == FlagType.boolean:
        falses = [name for name, value in variants.items() if value is False]
        if falses:
            return falses[0]
        raise ValueError("a boolean flag needs a variant whose value is false, served when the flag is off "
                         "(a kill switch); add one, e.g. \"off\": false, or name another in off_variant")
    raise ValueError(f"a {flag_type.value} flag must name its off_variant: the variant served wherever the flag is "
                     f"disabled, e.g. by a kill switch; variants are {sorted(variants)}")


def _fits(flag_type: FlagType, value: Any) -> bool:
    if flag_type == FlagType.boolean:
        return isinstance(value, bool)
    if flag_type == FlagType.string:
        return isinstance(value, str)
    if flag_type == FlagType.number:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, dict | list)


# -- tables ----------------------------------------------------------------------------------------
class Flag(SQLModel, table=True):
    """The live configuration; `version` is the ETag and the optimistic-concurrency token."""

    __tablename__ = "flags"

    key: str = Field(primary_key=True, max_length=128)
    version: int = 1
    spec: Any = json_field(nullable=False)
    deleted: bool = Field(default=False, index=True)
    created_at: datetime = ts_field(default_now=True)
    updated_at: datetime = ts_field(default_now=True)


class FlagVersion(SQLModel, table=True):
    __tablename__ = "flag_versions"
    __table_args__ = (UniqueConstraint("flag_key", "version", name="uq_flag_versions_key_version"),)

    id: int | None = Field(default=None, primary_key=True)
    flag_key: str = Field(max_length=128, index=True)
    version: int
    action: str = Field(max_length=50)
    spec: Any = json_field(nullable=False)
    diff: Any = json_field()  # RFC 6902 JSON Patch from the previous version
    actor: str = Field(max_length=200)
    reason: str | None = Field(default=None, max_length=2000)
    incident_id: str | None = Field(default=None, max_length=64, index=True)
    expires_at: datetime | None = ts_field(nullable=True)
    created_at: datetime = ts_field(default_now=True)


class FlagExpiry(SQLModel, table=True):
    """A temporary change: when due, the flag returns to `revert_to` unless `version` is no longer current."""

    __tablename__ = "flag_expiries"
    __table_args__ = (Index("ix_flag_expiries_status_due", "status", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True)
    flag_key: str = Field(max_length=128, index=True)
    version: int
    revert_to: int
    expires_at: datetime = ts_field()
    status: str = Field(default=ExpiryStatus.pending.value, max_length=16)
    actor: str = Field(max_length=200)
    reason: str | None = Field(default=None, max_length=2000)
    incident_id: str | None = Field(default=None, max_length=64, index=True)
    resolved_at: datetime | None = ts_field(nullable=True)
    resolution: str | None = Field(default=None, max_length=500)


class FlagEnvironment(SQLModel, table=True):
    __tablename__ = "flag_environments"

    name: str = Field(primary_key=True, max_length=63)
    description: str = Field(default="", max_length=500)
    created_at: datetime = ts_field(default_now=True)


# -- request and response schemas ------------------------------------------------------------------
class ChangeMeta(BaseModel):
    """What every write may carry: why, for which incident, and for how long."""

    reason: str | None = PydanticField(default=None, max_length=2000)
    incident_id: str | None = PydanticField(default=None, max_length=64)
    for_: Duration | None = PydanticField(default=None, alias="for")
    expires_at: UTCDateTime | None = None

    # Unknown fields are errors: a PATCH {"enabled": false} that silently changed nothing would be a trap.
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    @model_validator(mode="after")
    def _one_expiry(self) -> ChangeMeta:
        if self.for_ is not None and self.expires_at is not None:
            raise ValueError("give either 'for' or 'expires_at', not both")
        return self


class FlagCreate(ChangeMeta):
    key: str = PydanticField(pattern=KEY_PATTERN)
    description: str = PydanticField(default="", max_length=2000)
    type: FlagType
    variants: dict[str, Any] = PydanticField(min_length=1)
    default_variant: str
    off_variant: str | None = PydanticField(default=None, description="see FlagSpec.off_variant")
    enabled: bool = PydanticField(default=False, description="initial state in every environment not given")
    environments: dict[str, EnvironmentState] = PydanticField(default_factory=dict)
    tags: list[str] = PydanticField(default_factory=list)
    owner: str | None = None
    temporary: bool = False
    remove_after: date | None = None


class EnvironmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    default_variant: str | None = None
    rules: list[Rule] | None = None


class FlagUpdate(ChangeMeta):
    description: str | None = PydanticField(default=None, max_length=2000)
    type: FlagType | None = None
    variants: dict[str, Any] | None = None
    default_variant: str | None = None
    off_variant: str | None = None
    environments: dict[str, EnvironmentPatch] | None = None
    tags: list[str] | None = None
    owner: str | None = None
    temporary: bool | None = None
    remove_after: date | None = None


class FlagRollback(ChangeMeta):
    to_version: int = PydanticField(ge=1)


class FlagPublic(BaseModel):
    key: str
    version: int
    deleted: bool
    created_at: UTCDateTime
    updated_at: UTCDateTime
    spec: dict[str, Any]
    pending_expiries: list[dict[str, Any]] = PydanticField(default_factory=list)
    serving: dict[str, dict[str, Any]] = PydanticField(
        default_factory=dict, description="per environment, what a context no rule matches gets: a disabled "
                                          "environment serves the off variant (as OFREP does)")


class FlagVersionPublic(BaseModel):
    flag_key: str
    version: int
    action: str
    spec: dict[str, Any]
    diff: list[dict[str, Any]] | None
    actor: str
    reason: str | None
    incident_id: str | None
    expires_at: UTCDateTime | None
    created_at: UTCDateTime


class EnvironmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    name: str = PydanticField(pattern=ENV_PATTERN)
    description: str = PydanticField(default="", max_length=500)


class EnvironmentPublic(BaseModel):
    name: str
    description: str
    created_at: UTCDateTime


ChangeAction = Literal["flag.create", "flag.update", "flag.delete", "flag.restore", "flag.rollback", "flag.expire"]
