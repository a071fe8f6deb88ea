"""Inputs of the `flag.set` step kind, registered into the catalog (its implementation: workers/steps/flag_set.py)."""

from __future__ import annotations

from pydantic import Field, model_validator

from server.durations import Duration
from server.flags.models import ENV_PATTERN, KEY_PATTERN
from server.runbooks.kinds import StepInputs, register_kind


class FlagSetInputs(StepInputs):
    flag: str = Field(pattern=KEY_PATTERN, description="Flag key.")
    environment: str = Field("production", pattern=ENV_PATTERN, description="Environment to change.")
    enabled: bool | None = Field(None, description="Turn the flag on (true) or off (false, a kill switch).")
    variant: str | None = Field(None, description="Serve this variant by default in the environment.")
    for_: Duration | None = Field(None, alias="for", description="Revert by itself after this long.")
    reason: str | None = Field(None, max_length=2000, description="Shown in the audit log; default names the run.")

    @model_validator(mode="after")
    def _something_to_set(self) -> FlagSetInputs:
        if self.enabled is None and self.variant is None:
            raise ValueError("flag.set needs enabled, variant or both")
        return self


register_kind("flag.set", FlagSetInputs, "Turn a flag on or off (or change its default variant) in one "
              "environment, optionally for a while; rollback restores the previous version.", compensates=True,
              outputs=("flag", "environment", "version", "previous_version", "expires_at"))
