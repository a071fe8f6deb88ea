"""End to end with Debian's prometheus and prometheus-alertmanager, each on its own loopback port.

Prometheus scrapes examples/faulty-service's /metrics every second and evaluates examples/alertmanager's
error-rate rule; Alertmanager sends to runbookd's /hooks/alertmanager with a hook-role token; runbookd's
example trigger rule (examples/alertmanager/faulty-service.triggers.yaml) starts the shipped error-spike
runbook on a real worker. Turning the faulty-errors flag on fires the alert: the run names InventoryTimeout
and is filed under the incident the rule opened. Turning it off resolves the alert and the incident.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from server.app import create_app
from server.auth import service as auth
from server.auth.models import Role
from server.db import make_engine, session_scope
from server.migrate import upgrade
from server.settings import SHIPPED_RUNBOOKS_DIR, Settings
from server.stack import die_with_parent, free_port
from tests.conftest import TEST_ACTOR, subprocess_env
from tests.runbooks.conftest import FAULTS, Stack, set_fault, start_service, stop_service
from tests.support import REPO, http, serve, stop_process, wait_for, wait_run

PROMETHEUS, ALERTMANAGER = Path("/usr/bin/prometheus"), Path("/usr/bin/prometheus-alertmanager")
EXAMPLES = REPO / "examples" / "alertmanager"
pytestmark = pytest.mark.skipif(
    not (PROMETHEUS.exists() and ALERTMANAGER.exists()),
    reason="needs Debian's prometheus and prometheus-alertmanager (/usr/bin/prometheus, "
           "/usr/bin/prometheus-alertmanager): apt-get install prometheus prometheus-alertmanager")


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


@contextlib.contextmanager
def process(args: list[str], log: Path):
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        yield proc
    finally:
        stop_process(proc, grace=10)


@pytest.fixture(scope="module")
def e2e(redis_url, redis_prefix, tmp_path_factory):
    work = tmp_path_factory.mktemp("alert-e2e")
    home, runbooks, service_home = work / "home", work / "runbooks", work / "faulty-service"
    home.mkdir()
    shutil.copytree(SHIPPED_RUNBOOKS_DIR, runbooks)
    shutil.copy(EXAMPLES / "faulty-service.triggers.yaml", runbooks)  # the shipped example rule, as is
    url = f"sqlite:///{home / 'runbookd.sqlite3'}"
    upgrade(url)
    settings = Settings(home=home, database_url=url, redis_url=redis_url, redis_prefix=f"{redis_prefix}am:",
                        log_format="json", runbooks_dir=runbooks, artifacts_dir=home / "artifacts",
                        run_heartbeat_interval=0.5)
    engine = make_engine(url)
    with session_scope(engine) as session:
        _t, operator_token = auth.create_token(session, name="am-op", role=Role.operator, actor=TEST_ACTOR)
        _t, client_token = auth.create_token(session, name="am-svc", role=Role.client, actor=TEST_ACTOR)
        _t, hook_token = auth.create_token(session, name="alertmanager", role=Role.hook, actor=TEST_ACTOR)
    engine.dispose()
    env = subprocess_env(settings, RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5", RUNBOOKD_RUNBOOKS_DIR=str(runbooks),
                         RUNBOOKD_ARTIFACTS_DIR=str(settings.artifacts_dir))
    worker_log = work / "worker.log"
    with serve(create_app(settings)) as api, worker_log.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "server.cli", "worker", "--concurrency", "2", "--hostname",
                                   f"am-{uuid.uuid4().hex[:6]}@%h"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=die_with_parent)
        try:
            wait_for(lambda: b" ready." in worker_log.read_bytes() or worker.poll() is not None, 60, "worker")
            assert worker.poll() is None, worker_log.read_text()
            with http(api, operator_token) as operator:
                for fault in FAULTS:
                    created = operator.post("/api/v1/flags", json={
                        "key": f"faulty-{fault}", "type": "boolean", "variants": {"on": True, "off": False},
                        "default_variant": "off", "reason": "e2e",
                        "environments": {"production": {"enabled": False,
                                                        "rules": [{"conditions": [], "variant": "on"}]}}})
                    assert created.status_code == 201, created.text
                stack = Stack(api, operator, client_token, settings)
                service = start_service(stack, service_home)
                try:
                    with monitoring(work, api, service.url, service.log, hook_token) as ports:
                        yield stack, service, ports
                finally:
                    stop_service(service)
        finally:
            stop_process(worker)


@contextlib.contextmanager
def monitoring(work: Path, api: str, service_url: str, service_log: Path, hook_token: str):
    am_port, prom_port = free_port(), free_port()
    (work / "runbookd-token").write_text(hook_token)
    am_config = yaml.safe_load((EXAMPLES / "alertmanager.yml").read_text())
    hook = am_config["receivers"][0]["webhook_configs"][0]
    hook["url"] = f"{api}/hooks/alertmanager"
    hook["http_config"]["authorization"]["credentials_file"] = str(work / "runbookd-token")
    (work / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    rules = yaml.safe_load((EXAMPLES / "alert-rules.yml").read_text())
    rules["groups"][0]["rules"][0]["annotations"]["logs"] = str(service_log)
    (work / "alert-rules.yml").write_text(yaml.safe_dump(rules))
    prom = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
    prom["scrape_configs"][0]["static_configs"][0]["targets"] = [service_url.removeprefix("http://")]
    prom["rule_files"] = [str(work / "alert-rules.yml")]
    (work / "prometheus.yml").write_text(yaml.safe_dump(prom))
    am_args = [str(ALERTMANAGER), f"--config.file={work / 'alertmanager.yml'}", f"--storage.path={work / 'am-data'}",
               f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="]
    prom_args = [str(PROMETHEUS), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'prom'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"]
    with process(am_args, work / "alertmanager.log") as am, process(prom_args, work / "prometheus.log") as prom_proc:
        wait_for(lambda: _ready(f"http://127.0.0.1:{am_port}/-/ready") or am.poll() is not None, 60,
                 "alertmanager to be ready")
        assert am.poll() is None, (work / "alertmanager.log").read_text()[-3000:]
        wait_for(lambda: _ready(f"http://127.0.0.1:{prom_port}/-/ready") or prom_proc.poll() is not None, 60,
                 "prometheus to be ready")
        assert prom_proc.poll() is None, (work / "prometheus.log").read_text()[-3000:]
        yield {"prometheus": prom_port, "alertmanager": am_port, "work": work}


class Traffic:
    """Bounded loopback traffic: a few requests every 100 ms until stopped (at most `limit` seconds)."""

    def __init__(self, url: str, limit: float = 240) -> None:
        self.url, self.stop, self.sent = url, threading.Event(), 0
        self.deadline = time.monotonic() + limit
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                for _ in range(4):
                    i += 1
                    with contextlib.suppress(httpx.HTTPError):
                        client.get(f"/api/orders/{i}")
                        self.sent += 1
                self.stop.wait(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


def firing(prom_port: int) -> list[dict]:
    alerts = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == "FaultyServiceErrorRate" and a["state"] == "firing"]


def test_an_error_rate_alert_runs_error_spike_opens_and_resolves_the_incident(e2e):
    stack, service, ports = e2e
    operator = stack.operator
    metrics = httpx.get(f"{service.url}/metrics", timeout=5).text
    assert "faulty_http_request_duration_seconds_bucket" in metrics
    traffic = Traffic(service.url)
    try:
        wait_for(lambda: 'faulty_http_requests_total{method="GET",route="/api/orders/{order_id}",status="200"}'
                 in httpx.get(f"{service.url}/metrics", timeout=5).text, 30, "traffic to be counted")
        assert firing(ports["prometheus"]) == []
        set_fault(stack, "errors", True)
        wait_for(lambda: firing(ports["prometheus"]), 90, "Prometheus to fire FaultyServiceErrorRate", interval=0.5)

        def started_run() -> dict | None:
            page = operator.get("/api/v1/hooks/deliveries", params={"source": "alertmanager"}).json()
            for delivery in page["items"]:
                for d in delivery["result"]["decisions"]:
                    if d["outcome"] == "started":
                        return d
            return None

        wait_for(started_run, 60, "Alertmanager's delivery to start a run", interval=0.5)
        decision = started_run()
        assert decision["rule"] == "faulty-service-error-spike" and decision["runbook"] == "error-spike"
        run = wait_run(operator, decision["run_id"], timeout=120)
        assert run["status"] == "succeeded", run
        assert run["outputs"]["top_error"] == "InventoryTimeout"
        assert run["params"]["service"] == "faulty-service" and run["params"]["logs"] == str(service.log)
        assert run["actor"] == "hook:alertmanager"
        incident_id = run["incident_id"]
        assert incident_id and incident_id == decision["incident_id"]
        incident = operator.get(f"/api/v1/incidents/{incident_id}").json()
        assert (incident["severity"], incident["status"]) == ("sev2", "open")
        assert incident["title"] == "faulty-service: error rate above 20%"

        set_fault(stack, "errors", False)

        def resolved() -> bool:
            return operator.get(f"/api/v1/incidents/{incident_id}").json()["status"] == "resolved"

        wait_for(resolved, 120, "the alert to resolve and close the incident", interval=0.5)
    finally:
        traffic.close()
    timeline = operator.get(f"/api/v1/incidents/{incident_id}/timeline").json()
    actions = [(e["action"], e["actor"]) for e in timeline]
    assert ("incident.open", "hook:alertmanager") in actions
    assert ("incident.resolved", "hook:alertmanager") in actions
    assert ("alert.resolved", "hook:alertmanager") in actions
    # Alertmanager sent the firing group more than once (group_interval 1s): still one run.
    runs = operator.get("/api/v1/runs", params={"runbook": "error-spike"}).json()["items"]
    assert [r["id"] for r in runs] == [run["id"]]
