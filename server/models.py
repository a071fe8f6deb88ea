"""Imports every domain's tables so that Alembic and create_all see them all."""

from server.audit.models import AuditEvent, AuditHead
from server.auth.models import ApiToken
from server.flags.models import Flag, FlagEnvironment, FlagExpiry, FlagVersion
from server.loglevels.models import LogLevelOverride

__all__ = ["ApiToken", "AuditEvent", "AuditHead",
           "Flag", "FlagEnvironment", "FlagExpiry", "FlagVersion",
           "LogLevelOverride"]
