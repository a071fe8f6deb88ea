"""Imports every domain's tables so that Alembic and create_all see them all."""

from server.audit.models import AuditEvent, AuditHead
from server.auth.models import ApiToken
from server.chat.models import ChatFollowup
from server.flags.models import Flag, FlagEnvironment, FlagExpiry, FlagVersion
from server.hooks.models import HookDelivery, ScheduleState, TriggerFiring, TriggerGroup
from server.incidents.models import Incident
from server.loglevels.models import LogLevelOverride
from server.runbooks.models import UploadedRunbook
from server.runs.artifact_models import RunArtifact, RunArtifactChunk
from server.runs.models import Run, RunEvent, StepRun

__all__ = [
           "ApiToken",
           "AuditEvent",
           "AuditHead",
           "ChatFollowup",
           "Flag",
           "FlagEnvironment",
           "FlagExpiry",
           "FlagVersion",
           "HookDelivery",
           "Incident",
           "LogLevelOverride",
           "Run",
           "RunArtifact",
           "RunArtifactChunk",
           "RunEvent",
           "ScheduleState",
           "StepRun",
           "TriggerFiring",
           "TriggerGroup",
           "UploadedRunbook",
]
