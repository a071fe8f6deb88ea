"""`runbookd demo`: the embedded stack plus examples/faulty-service, its fault flags, and what to try.

The service runs as a supervised child: when the crash fault kills it, the demo says where the core went and
starts it again, so the crash-postmortem runbook has something to read and the other faults keep working.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from server.auth import service as auth
from server.auth.models import Actor, Role, Source
from server.console import make_console, print_error, styled
from server.db import make_engine, session_scope
from server.settings import Settings
from server.stack import Child, Stack, StackError, describe_exit, free_port, tail

SERVICE_APP = Path(__file__).resolve().parent.parent / "examples" / "faulty-service" / "app.py"
FAULTS = {"slow": "GET /api/orders/{id} takes ~0.8 s", "errors": "500s (InventoryTimeout) for even order ids",
          "leak": "memory grows ~150 MiB/min", "cpu": "a background job spins in score_recommendations",
          "crash": "POST /api/checkout segfaults in native code"}
DEMO_ACTOR = Actor(name="demo", role=Role.admin, source=Source.cli)
console = make_console()


def _tokens(settings: Settings) -> tuple[str, str]:
    """A client token for the service (flag evaluation, log levels) and an operator token for the person."""
    engine = make_engine(settings.effective_database_url)
    suffix = uuid.uuid4().hex[:6]
    try:
        with session_scope(engine) as session:
            _t, client = auth.create_token(session, name=f"faulty-service-{suffix}", role=Role.client,
                                           actor=DEMO_ACTOR)
            _t, operator = auth.create_token(session, name=f"demo-operator-{suffix}", role=Role.operator,
                                             actor=DEMO_ACTOR)
    finally:
        engine.dispose()
    return client, operator


def ensure_fault_flags(url: str, operator_token: str) -> None:
    """One boolean flag per fault, off: a catch-all rule serves `on` once the flag is enabled."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator_token}"}, timeout=10) as client:
        for fault, what in FAULTS.items():
            if client.get(f"/api/v1/flags/faulty-{fault}").status_code == 200:
                continue
            response = client.post("/api/v1/flags", json={
                "key": f"faulty-{fault}", "type": "boolean", "variants": {"on": True, "off": False},
                "default_variant": "off", "description": f"faulty-service demo: {what}", "tags": ["demo"],
                "environments": {"production": {"enabled": False, "rules": [{"conditions": [], "variant": "on"}]}},
                "reason": "runbookd demo"})
            if response.status_code != 201:
                raise StackError(f"could not create flag faulty-{fault}: {response.status_code} {response.text}")


class FaultyService:
    def __init__(self, settings: Settings, api_url: str, token: str, port: int) -> None:
        self.home = settings.home / "faulty-service"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = self.home / "faulty-service.jsonl"
        self.pid_file = self.home / "faulty-service.pid"
        self.url = f"http://127.0.0.1:{port}"
        self.child = Child("faulty-service", [sys.executable, str(SERVICE_APP), "--port", str(port)],
                           settings.home / "logs" / "faulty-service.out")
        self.env = {**os.environ, "RUNBOOKD_URL": api_url, "RUNBOOKD_TOKEN": token, "FAULTY_HOME": str(self.home),
                    "FAULTY_LOG": str(self.log), "FAULTY_PID_FILE": str(self.pid_file)}

    def start(self) -> None:
        self.child.start(self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.child.exited() is not None:
                raise StackError(f"faulty-service {describe_exit(self.child.exited() or 0)}:\n"
                                 + tail(self.child.log_path))
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise StackError(f"faulty-service did not answer at {self.url}; see {self.child.log_path}")

    def supervise(self) -> None:
        """Restart the service when it died (the crash fault): the demo goes on."""
        code = self.child.exited()
        if code is None:
            return
        cores = sorted(self.home.glob("core*"), key=lambda p: p.stat().st_mtime)
        console.print(styled((f"faulty-service {describe_exit(code)}", "yellow"),
                             (f"; core: {cores[-1]}" if cores else "") + ". Restarting it."))
        if self.child.log_file:
            self.child.log_file.close()
        self.start()

    def stop(self) -> None:
        self.child.terminate()
        self.child.wait_or_kill(time.monotonic() + 10)


def _hints(api: str, operator: str, service: FaultyService) -> None:
    console.print(styled("\n", ("demo ready", "bold green"), ": runbookd at ", (api, "bold"), ", faulty-service at ",
                         (service.url, "bold")))
    console.print(f"  service logs (JSON lines): {service.log}\n  service pid file: {service.pid_file}\n")
    console.print(f"  export RUNBOOKD_URL={api} RUNBOOKD_TOKEN={operator}\n")
    console.print("Faults (flags, all off): " + ", ".join(f"faulty-{f}" for f in FAULTS))
    console.print("Turn one on with `runbookd flags on faulty-errors`, then try:\n")
    log, pid = service.log, service.pid_file
    tries = [
        ("errors", f"for i in $(seq 1 30); do curl -s -o /dev/null {service.url}/api/orders/$i; done\n"
                   f"  runbookd run error-spike logs={log} -f"),
        ("slow", f"runbookd run latency-regression base_url={service.url} logs={log} -f"),
        ("cpu", f"runbookd run cpu-hotspot pid_file={pid} duration=5s -f"),
        ("leak", f"runbookd run memory-leak pid_file={pid} window=10s -f"),
        ("crash", f"curl -s -X POST -H 'content-type: application/json' -d '{{}}' {service.url}/api/checkout\n"
                  f"  runbookd run crash-postmortem 'core={service.home}/core*' binary={sys.executable} "
                  f"logs={log} -f"),
        ("errors", f"runbookd run kill-switch flag=faulty-errors verify_url={service.url}/api/orders/2 -f"),
    ]
    for fault, command in tries:
        console.print(styled((f"faulty-{fault}", "bold"), f":\n  {command}"))
    console.print("\nPress Ctrl-C to stop everything.")


def run_demo(settings: Settings, service_port: int | None = None) -> int:
    if not SERVICE_APP.exists():
        print_error(console, f"{SERVICE_APP} is missing: run the demo from a checkout of runbookd")
        return 1
    stack = Stack(settings)

    def request_stop(signum: int, _frame: object) -> None:
        stack.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    service: FaultyService | None = None
    code = 0
    try:
        api, admin = stack.start()
        if admin:
            console.print(f"First start: an admin token was created, shown only this once:\n{admin}")
        client_token, operator_token = _tokens(settings)
        ensure_fault_flags(api, operator_token)
        service = FaultyService(settings, api, client_token, service_port or free_port())
        service.start()
        _hints(api, operator_token, service)
        while not stack.stopping:
            stack._check_children()  # the same watch as `runbookd up`, beside our own supervision
            service.supervise()
            time.sleep(0.25)
    except (StackError, httpx.HTTPError, subprocess.SubprocessError) as exc:
        print_error(console, exc)
        code = 1
    finally:
        if service is not None:
            service.stop()
        stack.stop()
        console.print("stopped." if code == 0 else "stopped after an error.")
    return code
