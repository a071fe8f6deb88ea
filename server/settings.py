"""Every setting is an environment variable with the RUNBOOKD_ prefix; the README lists them all."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.auth.models import Role
from server.durations import Duration

SHIPPED_RUNBOOKS_DIR = Path(__file__).resolve().parent.parent / "runbooks"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNBOOKD_", extra="ignore")

    home: Path = Field(Path(".runbookd"), description="Data directory of the embedded stack: SQLite, Redis, logs.")
    host: str = Field("127.0.0.1", description="Address the api listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the api listens on.")
    api_processes: int = Field(1, ge=1, description="Processes of `runbookd api` sharing its port (uvicorn workers).")
    public_url: str | None = Field(None, description="URL users reach the api at, for links; default http://HOST:PORT.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite at $RUNBOOKD_HOME/runbookd.sqlite3."
    )
    redis_url: str | None = Field(
        None, description="Redis URL; `runbookd up` starts a private redis-server when it is unset."
    )
    redis_prefix: str = Field(
        "runbookd:", description="Prefix of every Redis key and channel runbookd uses, broker queues included."
    )
    log_level: str = Field("INFO", description="Level of the server's own loggers.")
    log_format: Literal["json", "text"] = Field("json", description="json: one object a line; text: for humans.")
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest accepted request body, in bytes (default 1 MiB)."
    )
    runbooks_dir: Path = Field(SHIPPED_RUNBOOKS_DIR, description="Directory of *.yaml runbooks.")
    artifacts_dir: Path | None = Field(None, description="Worker scratch for files steps write until the run ends "
                                      "(they are stored in the database); default $RUNBOOKD_HOME/artifacts.")
    worker_concurrency: int = Field(2, ge=1, description="Processes per `runbookd worker`.")
    default_queue: str = Field("runbookd", description="Celery queue that steps without `on:` run on.")
    run_heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between a running run's heartbeats.")
    run_reap_grace: float = Field(
        60.0, gt=0, description="A running run without a heartbeat for this many seconds is failed by the reaper."
    )
    run_default_timeout: float = Field(3600.0, gt=0, description="Run timeout, in seconds, when a runbook sets none.")
    step_output_cap: int = Field(
        64 * 1024, ge=1024, description="Step outputs larger than this many bytes go to an artifact file."
    )
    run_progress_fsync: bool = Field(
        False, description="Wait for PostgreSQL to flush each step's result (and the step's own writes) to disk "
        "before the next step. Off: a crash of the database server, not of a worker, can lose the last fraction "
        "of a second of a run's progress, which the resumed run then repeats.",
    )
    run_resend_after: float = Field(
        60.0, gt=0, description="Beat's relay sends a queued run again when it was sent this many seconds ago and "
        "no worker has taken it: its message may be lost (an api killed between its commit and its send). A "
        "duplicate message is harmless (the claim drops it); a longer wait costs fewer duplicates on a backlog.",
    )
    run_db_wait: float = Field(
        60.0, ge=0, description="Seconds a worker's run waits for an unreachable database (a restart, a failover) "
        "before its next write fails; steps in flight finish and are recorded once the database is back.",
    )
    audit_retention_days: int | None = Field(
        None, ge=1, description="Archive (JSONL) and remove audit events older than this; unset keeps them all."
    )
    slack_signing_secret: SecretStr | None = Field(None, description="Slack app signing secret.")
    mattermost_token: SecretStr | None = Field(None, description="Mattermost slash-command token.")
    chat_command: str = Field("rb", pattern=r"^[a-z][a-z0-9-]{0,30}$", description="The slash command word, e.g. rb.")
    chat_users: dict[str, Role] = Field(
        default_factory=dict, description='Chat users -> role, JSON: {"slack:T1/U1": "operator"}.'
    )
    chat_channels: dict[str, Role] = Field(
        default_factory=dict, description='Chat channels -> role for everyone in them: {"slack:T1/C1": "operator"}.'
    )
    chat_unmapped: Literal["viewer", "refuse"] = Field(
        "viewer", description="What a chat user in no mapping may do: read (viewer) or nothing (refuse)."
    )
    chat_channel_allowlist: list[str] = Field(
        default_factory=list, description='Channels commands are accepted from, JSON list; empty accepts any.'
    )
    flag_environment: str = Field("production", description="Flag environment of evaluations that name none.")
    flag_cache_check_seconds: float = Field(
        1.0, gt=0, description="How often each api process checks that it missed no flag change notice."
    )
    auth_cache_seconds: float = Field(
        5.0, ge=0, description="How long an api process trusts a checked token without asking the database. "
        "A revocation is announced over Redis and takes effect at once; without Redis it lags by this much. "
        "0 asks the database on every request."
    )
    hook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict, description='Generic webhooks and their HMAC secrets, JSON: {"ci": "s3cret"}; '
        "POST /hooks/generic/NAME verifies X-Runbookd-Signature with NAME's secret.",
    )
    hook_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest delivery /hooks/* accepts, in bytes; larger ones get 413 "
        "(RUNBOOKD_MAX_BODY_BYTES caps every request first).",
    )
    hook_signature_max_age: int = Field(
        300, ge=10, le=3600, description="Replay window of signed generic webhooks, in seconds: an older "
        "X-Runbookd-Timestamp is refused, and so is a signature seen before within it.",
    )
    loglevel_max_duration: Duration = Field(
        timedelta(hours=4), description="Longest temporary log-level override (issue 4's safety rail)."
    )
    artifact_link_ttl: Duration = Field(
        timedelta(minutes=15), description="How long a signed artifact link (opens without a token) stays valid."
    )
    artifact_link_secret: SecretStr | None = Field(
        None, description="Key that signs artifact links; unset: one random key shared through Redis."
    )

    # Security (issue 15)
    step_env_passthrough: list[str] = Field(
        default_factory=lambda: ["PATH", "LANG", "HOME"],
        description="Environment variables a step's process inherits from the worker, JSON list; the runbook's "
        "env: adds more. RUNBOOKD_*, database, Redis and secret-looking names are never passed.",
    )
    approval_by_others: bool = Field(
        False, description="Every approval-gated step needs a second person: the run's starter may not approve "
        "it (a step may say approval: {required: true, by: others} without this).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description='Host headers the api answers, JSON list ("rb.example.com", '
        '"*.example.com"); others get 400. Empty answers any (set it in production).')
    auth_fail_limit: int = Field(
        30, ge=1, description="Bad tokens one client address may present per minute (per api process) "
        "before every request from it gets 429 for the rest of the minute.")
    max_streams_per_token: int = Field(
        20, ge=1, description="Server-Sent Event streams one token may hold open at once (per api process).")
    http_allow_cidrs: list[str] = Field(
        default_factory=list, description="Networks http steps may reach, JSON list; empty: any not denied.")
    http_deny_cidrs: list[str] = Field(
        default_factory=lambda: ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"],
        description="Networks http steps may never reach (checked after DNS and on each redirect): "
        "link-local and cloud metadata by default.")
    http_allow_hosts: list[str] = Field(
        default_factory=list, description="Host names (or *.domain) http steps may reach besides allow_cidrs.")
    http_deny_hosts: list[str] = Field(
        default_factory=lambda: ["metadata.google.internal", "metadata"],
        description="Host names (or *.domain) http steps may never reach.")

    # Lost workers (issue 15)
    max_resumes: int = Field(
        2, ge=0, description="How many times the reaper resumes a run whose worker was lost (re-sent to its queue, "
        "continued at its first unfinished step) before it fails the run, naming every worker lost; 0 fails at once.")
    broker_visibility_timeout: float = Field(
        3600.0, gt=0, description="Seconds before Redis hands a run's message that was never acknowledged (its "
        "worker vanished) to another worker; a run the reaper resumed meanwhile ignores it.")

    # Artifacts in the database (issue 15: artifacts that outlive their node)
    artifacts_max_run_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="Most bytes of artifacts one run may store in the database (default "
        "64 MiB); an artifact that would pass it is not stored and its step's outputs say so. 0 stores none.")
    artifacts_retention: Duration = Field(
        timedelta(days=30), description="Artifacts older than this are deleted by beat's sweep (default 30d).")

    @field_validator("http_allow_cidrs", "http_deny_cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a network (CIDR like 10.0.0.0/8 or fd00::/8): {exc}") from None
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.home = self.home.expanduser().absolute()
        if self.artifacts_dir is None:
            self.artifacts_dir = self.home / "artifacts"
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'runbookd.sqlite3'}"

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "RUNBOOKD_REDIS_URL is not set: set it to redis://HOST:PORT/DB, or use `runbookd up`, "
                "which starts a private redis-server"
            )
        return self.redis_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
