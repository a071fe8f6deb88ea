"""The complete catalog of step kinds: importing this module imports every module that registers kinds."""

from __future__ import annotations

import server.flags.steps  # (flag.set)
import server.loglevels.steps  # (loglevel.raise)
import server.runbooks.toolkit_kinds  # (the toolkit's kinds)
import server.runbooks.trace_kinds  # noqa: F401  (trace.get, trace.search; the imports bind one name)
from server.runbooks.kinds import REGISTERED, KindSpec

CATALOG: dict[str, KindSpec] = REGISTERED

__all__ = ["CATALOG", "KindSpec"]
