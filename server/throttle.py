"""Per-process limits on what one caller can tie up: guesses at tokens, and open event streams.

- A client address that presented RUNBOOKD_AUTH_FAIL_LIMIT bad tokens within a minute gets 429 (with
  Retry-After) for every token, good ones included, until the minute has passed: guessing tokens is slow.
- A token may hold at most RUNBOOKD_MAX_STREAMS_PER_TOKEN Server-Sent Event streams open at once in one api
  process; the next gets 429 until one closes.

Both count per api process (RUNBOOKD_API_PROCESSES multiplies them), which bounds the cost without a
round trip to Redis on every request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

from server.auth.models import Actor
from server.errors import DomainError

WINDOW_S = 60.0
MAX_CLIENTS = 10_000


class TooManyRequests(DomainError):
    status_code = 429
    code = "too_many_requests"


class AuthThrottle:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self.failures.setdefault(client, deque())
        while times and now - times[0] > WINDOW_S:
            times.popleft()
        return times

    def check(self, client: str) -> None:
        now = time.monotonic()
        with self.lock:
            if client not in self.failures:
                return
            times = self._recent(client, now)
            if len(times) >= self.limit:
                wait = int(WINDOW_S - (now - times[0])) + 1
                raise TooManyRequests(f"too many bad tokens from {client}: try again in {wait}s",
                                      headers={"Retry-After": str(wait)})

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self.lock:
            self._recent(client, now).append(now)
            self.failures.move_to_end(client)
            while len(self.failures) > MAX_CLIENTS:
                self.failures.popitem(last=False)


class StreamSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()

    @staticmethod
    def _holder(actor: Actor) -> str:
        return f"token:{actor.token_id}" if actor.token_id is not None else f"{actor.source}:{actor.name}"

    def take(self, actor: Actor) -> str:
        """Reserve a slot (429 when the token holds them all); give it back with give_back."""
        holder = self._holder(actor)
        with self.lock:
            if self.open.get(holder, 0) >= self.limit:
                raise TooManyRequests(f"{actor.name} already has {self.limit} event streams open here; "
                                      "close one (RUNBOOKD_MAX_STREAMS_PER_TOKEN)", headers={"Retry-After": "5"})
            self.open[holder] = self.open.get(holder, 0) + 1
        return holder

    def give_back(self, holder: str) -> None:
        with self.lock:
            left = self.open.get(holder, 1) - 1
            if left > 0:
                self.open[holder] = left
            else:
                self.open.pop(holder, None)

    async def hold(self, holder: str, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The stream, giving its slot back when it ends or the client goes."""
        try:
            async for event in events:
                yield event
        finally:
            self.give_back(holder)


def auth_throttle(state: Any) -> AuthThrottle:
    found: AuthThrottle | None = getattr(state, "auth_throttle", None)
    if found is None:
        found = state.auth_throttle = AuthThrottle(state.settings.auth_fail_limit)
    return found


def stream_slots(state: Any) -> StreamSlots:
    found: StreamSlots | None = getattr(state, "stream_slots", None)
    if found is None:
        found = state.stream_slots = StreamSlots(state.settings.max_streams_per_token)
    return found
