"""LogLevelAgent: applies runbookd's temporary log-level overrides inside a Python service.

    from server.agent import LogLevelAgent
    agent = LogLevelAgent("https://runbookd.example", "checkout", token=os.environ["RUNBOOKD_TOKEN"])
    agent.start()   # a daemon thread; agent.stop() restores every level it changed

It polls GET /api/v1/loglevels/{service} (with If-None-Match, so an unchanged answer is a 304), or with
stream=True follows GET /api/v1/loglevels/{service}/events (Server-Sent Events, pushed on every change); it sets
each overridden logger with logging.getLogger(name).setLevel, and puts back the level the logger had
before when its override ends: when the server says so, when the override's expiry passes (even if the
server cannot be asked), or when the server has been unreachable for longer than `grace`, so a lost
server never leaves a service logging at DEBUG. A `client`-role token is enough.

This module needs only httpx and the standard library, so a service can vendor this one file.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

import httpx

TRACE = 5
OFF = logging.CRITICAL + 10
# Spring Boot Actuator's names, most severe first; the server's /debug/loggers uses the same table.
LEVELS: dict[str, int] = {
    "OFF": OFF, "FATAL": logging.CRITICAL, "ERROR": logging.ERROR, "WARN": logging.WARNING,
    "INFO": logging.INFO, "DEBUG": logging.DEBUG, "TRACE": TRACE,
}
ROOT = "ROOT"

log = logging.getLogger("runbookd.agent")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger() if name == ROOT else logging.getLogger(name)


class LevelApplier:
    """Sets loggers to wanted levels and remembers each one's own level to restore it afterwards."""

    def __init__(self) -> None:
        self.originals: dict[str, int] = {}
        self._lock = threading.Lock()

    def apply(self, wanted: dict[str, str]) -> dict[str, str]:
        """Make exactly the loggers in `wanted` overridden; returns what changed, for logging."""
        changes: dict[str, str] = {}
        with self._lock:
            for name in [n for n in self.originals if n not in wanted]:
                original = self.originals.pop(name)
                get_logger(name).setLevel(original)
                changes[name] = f"restored to {logging.getLevelName(original)}"
            for name, level in wanted.items():
                number = LEVELS.get(level.upper())
                if number is None:
                    continue  # a level this agent does not know: leave the logger as it is
                target = get_logger(name)
                if name not in self.originals:
                    self.originals[name] = target.level
                if target.level != number:
                    target.setLevel(number)
                    changes[name] = level.upper()
        return changes

    def restore_all(self) -> dict[str, str]:
        return self.apply({})


class LogLevelAgent:
    """A background thread that keeps this process's loggers in line with the server's overrides."""

    def __init__(self, base_url: str, service: str, token: str, *, poll_interval: float = 10.0,
                 grace: float = 60.0, timeout: float = 5.0, stream: bool = False,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.service = service
        self.stream = stream
        self.timeout = timeout
        # The server sends a keepalive this often, so a silent stream is noticed well within the grace.
        self.keepalive = max(1.0, min(15.0, grace / 3))
        self.poll_interval = poll_interval
        self.grace = grace
        self.applier = LevelApplier()
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                    headers={"Authorization": f"Bearer {token}"})
        self._etag: str | None = None
        self._wanted: dict[str, tuple[str, float | None]] = {}  # logger -> (level, expiry as epoch seconds)
        self._last_success = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> LogLevelAgent:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"loglevel-agent-{self.service}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and put every logger back as it was."""
        self._stop.set()
        if self._thread is not None:
            # A stream read wakes at the next keepalive at the latest.
            self._thread.join((self.keepalive if self.stream else self.poll_interval) + self.timeout + 1)
            self._thread = None
        self.applier.restore_all()
        self._client.close()

    def __enter__(self) -> LogLevelAgent:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def poll_once(self) -> None:
        """Ask the server once and apply its answer; on failure keep levels until the grace runs out."""
        try:
            headers = {"If-None-Match": self._etag} if self._etag else {}
            response = self._client.get(f"/api/v1/loglevels/{self.service}", headers=headers)
            if response.status_code == 200:
                self._wanted = self._parse(response.json())
                self._etag = response.headers.get("etag")
            elif response.status_code != 304:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            self._last_success = time.monotonic()
            self.last_error = None
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            if self.last_error is None:
                log.warning("runbookd unreachable: %s", exc)
            self.last_error = str(exc)
        self._apply()

    def _parse(self, body: dict[str, Any]) -> dict[str, tuple[str, float | None]]:
        wanted: dict[str, tuple[str, float | None]] = {}
        for name, entry in body.get("loggers", {}).items():
            expires = entry.get("expires_at")
            wanted[name] = (entry["level"], datetime.fromisoformat(expires).timestamp() if expires else None)
        return wanted

    def _apply(self) -> None:
        if time.monotonic() - self._last_success > self.grace:
            # The server may have ended these long ago; silence is not consent to log at DEBUG forever.
            wanted: dict[str, str] = {}
            self._etag = None
        else:
            now = time.time()
            wanted = {name: level for name, (level, expiry) in self._wanted.items() if expiry is None or expiry > now}
        changes = self.applier.apply(wanted)
        if changes:
            log.info("log levels changed: %s", changes)

    def _next_wait(self) -> float:
        now = time.time()
        expiries = [expiry - now for _level, expiry in self._wanted.values() if expiry is not None and expiry > now]
        return max(0.05, min([self.poll_interval, *expiries]))

    def follow_once(self) -> None:
        """Follow the event stream until it ends or fails; then the caller reconnects (or the grace runs out)."""
        timeout = httpx.Timeout(self.timeout, read=self.keepalive * 2 + self.timeout)
        try:
            with self._client.stream("GET", f"/api/v1/loglevels/{self.service}/events",
                                     params={"keepalive": self.keepalive}, timeout=timeout) as response:
                if response.status_code != 200:
                    response.read()
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    self._last_success = time.monotonic()
                    self.last_error = None
                    if line.startswith("data:"):
                        self._wanted = self._parse(json.loads(line[5:]))
                        self._etag = None
                    self._apply()
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            if self.last_error is None:
                log.warning("runbookd unreachable: %s", exc)
            self.last_error = str(exc)
        self._apply()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.stream:
                self.follow_once()
                self._stop.wait(min(self.poll_interval, 1.0))  # then reconnect
            else:
                self.poll_once()
                self._stop.wait(self._next_wait())
