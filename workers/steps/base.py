"""The step interface: one small class per kind with `run(inputs, ctx) -> outputs`, like httpx's BaseTransport.

How to add a kind (the catalog half is described in server/runbooks/kinds.py):

    from workers.steps.base import Step, StepContext, StepFailed, register
    from server.flags.steps import FlagSetInputs

    @register("flag.set")
    class FlagSet(Step[FlagSetInputs]):
        def run(self, inputs: FlagSetInputs, ctx: StepContext) -> dict[str, Any]:
            ...                        # do the work; raise StepFailed("why") on an expected failure
            return {"version": 7}      # JSON-serialisable outputs: steps.<id>.outputs in later steps

        def compensate(self, inputs, outputs, ctx) -> None:   # optional: on_failure: rollback calls it
            ...

A module under workers/steps/ is imported by load_step_kinds(), so the decorator is all the wiring.
`inputs` arrives rendered (templates expanded) and validated against the catalog's model. Long steps
must watch `ctx.cancelled` (or use ctx.sleep / ctx.remaining) so cancel and timeouts stop them; the
engine also stops waiting for a step that ignores them, but cannot stop its thread.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Engine

from server.auth.models import Actor
from server.settings import Settings

InputsT = TypeVar("InputsT", bound=BaseModel)


class StepFailed(Exception):
    """An expected failure (assertion false, unexpected status, non-zero exit); outputs are still stored."""

    def __init__(self, message: str, outputs: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.outputs = outputs or {}


class StepInterrupted(Exception):
    """Raised inside a step when it must stop early: one of the two below says why."""


class StepCancelled(StepInterrupted):
    """The run was cancelled (or taken from this worker) while the step ran."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


class StepTimedOut(StepInterrupted):
    """The step's deadline (its own timeout or the run's) passed."""

    def __init__(self, message: str = "timed out") -> None:
        super().__init__(message)


@dataclass
class StepContext:
    run_id: int
    step_id: str
    attempt: int
    actor: Actor                      # who started the run: use it for audit records the step writes
    incident_id: str | None
    settings: Settings
    engine: Engine                    # for steps that change runbookd's own state (use server.db.session_scope)
    deadline: float | None = None     # time.monotonic() by which the step must end
    cancelled: threading.Event = field(default_factory=threading.Event)
    emit: Callable[[str], None] = lambda line: None            # one line of live output for followers
    evaluate: Callable[..., Any] = lambda expression, extra=None: None  # evaluate(expr, {"probe": ...})
    # Masks secret param values: use it on anything a step writes to a log or sends elsewhere itself
    # (outputs, errors and emitted lines are masked by the engine already).
    redact: Callable[[Any], Any] = lambda value: value

    def remaining(self, default: float | None = None) -> float | None:
        """Seconds left before the deadline (never below 0.1), or default when there is none."""
        if self.deadline is None:
            return default
        left = max(0.1, self.deadline - time.monotonic())
        return left if default is None else min(left, default)

    def sleep(self, seconds: float) -> None:
        """Sleep, but raise StepInterrupted at once on cancel or when the deadline passes first."""
        limit = seconds if self.deadline is None else min(seconds, self.deadline - time.monotonic())
        if self.cancelled.wait(max(0.0, limit)):
            raise StepCancelled
        if limit < seconds:
            raise StepTimedOut

    def check(self) -> None:
        if self.cancelled.is_set():
            raise StepCancelled


class Step(Generic[InputsT]):
    kind: ClassVar[str] = ""

    def run(self, inputs: InputsT, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError

    def compensate(self, inputs: InputsT, outputs: dict[str, Any], ctx: StepContext) -> None:
        """Undo what run() did; only kinds whose catalog entry says compensates=True override it."""
        raise NotImplementedError

    @classmethod
    def has_compensation(cls) -> bool:
        return cls.compensate is not Step.compensate


REGISTRY: dict[str, type[Step[Any]]] = {}


def register(name: str) -> Callable[[type[Step[Any]]], type[Step[Any]]]:
    def decorate(cls: type[Step[Any]]) -> type[Step[Any]]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"step kind {name!r} is implemented twice: {REGISTRY[name]} and {cls}")
        cls.kind = name
        REGISTRY[name] = cls
        return cls

    return decorate


def load_step_kinds() -> dict[str, type[Step[Any]]]:
    """Import every module of this package so each @register runs; returns the registry."""
    package = importlib.import_module("workers.steps")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "base":
            importlib.import_module(f"workers.steps.{module.name}")
    return REGISTRY
