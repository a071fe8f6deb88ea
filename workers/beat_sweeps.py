"""The time-critical sweeps, run in beat itself: temporary flag changes and log-level overrides end at most
~2 s late even when every worker pool process is busy with long runs.

Sent to workers, these sweeps waited behind runs for a free pool slot and were dropped on `expires`, so a
kill switch meant for 5 s could stay on for minutes. Here a thread of the beat process runs both once a second,
each with its own try/except (a failing one neither stops the thread nor holds back the other), with an engine
and a Redis client of its own. Both sweeps are idempotent and lock their rows (flags: the flag row, FOR UPDATE;
log levels: FOR UPDATE SKIP LOCKED), so an api's start-up sweep running at the same moment applies nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from server.db import make_engine
from server.flags.expiry import revert_due
from server.loglevels.sync import sweep_expired
from server.redis_client import make_redis
from server.settings import Settings

log = logging.getLogger("runbookd.beat")

INTERVAL = 1.0
WARN_EVERY = 60.0  # at most one warning a minute per sweep while it keeps failing


class BeatSweeps:
    """A daemon thread sweeping due reverts every INTERVAL seconds until stop()."""

    def __init__(self, settings: Settings, *, interval: float = INTERVAL) -> None:
        self.settings = settings
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at: dict[str, float] = {}
        self._engine: Any = None
        self._redis: Any = None

    def start(self) -> BeatSweeps:
        self._engine = make_engine(self.settings.effective_database_url)
        self._redis = make_redis(self.settings)
        self._thread = threading.Thread(target=self._loop, name="runbookd-beat-sweeps", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Let the sweep under way finish, then close the engine and the Redis client."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def sweep_once(self) -> dict[str, int]:
        """Run each sweep once; a failing one is logged (rate-limited) and the other still runs."""
        sweeps: dict[str, Callable[[], int]] = {
            "flags": lambda: len(revert_due(self._engine, self.settings, self._redis)),
            "loglevels": lambda: sweep_expired(self._engine, self.settings, self._redis),
        }
        done: dict[str, int] = {}
        for name, sweep in sweeps.items():
            try:
                done[name] = sweep()
            except Exception:
                now = time.monotonic()
                if now - self._warned_at.get(name, -WARN_EVERY) >= WARN_EVERY:
                    self._warned_at[name] = now
                    log.warning("the %s expiry sweep failed; retrying every %ss", name, self.interval,
                                exc_info=True)
                continue
            if done[name]:
                log.info("expiry sweep applied", extra={"sweep": name, "count": done[name]})
            self._warned_at.pop(name, None)
        return done

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sweep_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
