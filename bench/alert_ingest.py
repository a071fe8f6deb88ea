"""Alert ingest: one Alertmanager delivery of 1,000 alerts against 200 trigger rules, time to answer.

A real `runbookd api` over PostgreSQL and Redis. Each sample is a new delivery (fresh fingerprints and
startsAt) of 1,000 alerts (alertname A0..A199, five each) against 200 rules, one per alertname, each with
`max_runs_per_minute: 2` and an `open_incident`: the first delivery starts 400 runs and opens 200 incidents,
the later ones are answered with every match suppressed by the guard, as in a storm. Each answer comes
after the commit of everything it decided (and, for started runs, after they were sent to the broker).
Baseline, in the same run against the same api: POST /api/v1/runs of one run.
Then 5 concurrent copies of one more delivery (100 alerts, 10 rules without limits): every run must start
exactly once.

Targets (issue 17): p95 of the 1,000-alert delivery at most 200 ms; zero duplicate runs.

    .venv/bin/python bench/alert_ingest.py [--samples 30] [--baseline-samples 50]

Uses PostgreSQL at RUNBOOKD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres) in a
database it creates and drops, and the Redis at RUNBOOKD_TEST_REDIS_URL (default redis://127.0.0.1:6379/0)
under a key prefix of its own, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
from _verdict import Targets, cannot_measure  # noqa: E402  (bench/ is on sys.path as the script's directory)
from sqlalchemy import text  # noqa: E402

from server.auth import service as auth  # noqa: E402
from server.auth.models import Actor, Role, Source  # noqa: E402
from server.db import make_engine, session_scope  # noqa: E402
from server.migrate import upgrade  # noqa: E402
from server.stack import free_port  # noqa: E402
from tests.support import (  # noqa: E402
    REDIS_URL,
    create_pg_database,
    delete_prefixed_keys,
    drop_pg_database,
    postgres_problem,
    stop_process,
    wait_for,
)

RULES, ALERTS, TARGET_P95_MS, COPIES = 200, 1000, 200.0, 5
RUNBOOK = """\
title: Probe
params:
  service: {type: string}
  instance: {type: string, default: unknown}
steps:
  - {id: say, uses: log, with: {message: "probe {{ params.service }}"}}
"""


def rules_file() -> str:
    out = ["triggers:"]
    for i in range(RULES):
        out += [f"  - id: storm-{i}", "    runbook: probe", f"    match: {{labels: {{alertname: A{i}}}}}",
                '    params: {service: "{{ alert.labels.job }}", instance: "{{ alert.labels.instance }}"}',
                "    max_runs_per_minute: 2", "    open_incident: {title: '{{ alert.labels.alertname }} storm'}"]
    for i in range(10):
        out += [f"  - id: dup-{i}", "    runbook: probe", f"    match: {{labels: {{alertname: D{i}}}}}",
                '    params: {service: "{{ alert.labels.job }}"}']
    return "\n".join(out) + "\n"


def delivery(names: list[str], count: int) -> bytes:
    tag = uuid.uuid4().hex[:8]
    alerts = [{"status": "firing", "labels": {"alertname": names[i % len(names)], "job": f"job-{i}",
                                              "instance": f"10.0.{i // 250}.{i % 250}:9100", "severity": "page"},
               "annotations": {"summary": "error rate above 5%"}, "startsAt": f"2026-12-02T00:00:00.{tag}Z",
               "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph",
               "fingerprint": f"{tag}{i:08x}"} for i in range(count)]
    return orjson.dumps({"version": "4", "groupKey": f'{{}}:{{storm="{tag}"}}', "truncatedAlerts": 0,
                         "status": "firing", "receiver": "runbookd", "groupLabels": {}, "commonLabels": {},
                         "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": alerts})


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--baseline-samples", type=int, default=50)
    args = parser.parse_args()
    problem = postgres_problem()
    if problem:
        return cannot_measure("alert_ingest", problem)
    prefix = f"rbdbench-{uuid.uuid4().hex[:8]}:"
    name, db_url = create_pg_database()
    try:
        upgrade(db_url)
        with tempfile.TemporaryDirectory(prefix="rbd-bench-") as tmp:
            return measure(Path(tmp), db_url, prefix, args.samples, args.baseline_samples)
    finally:
        delete_prefixed_keys(REDIS_URL, prefix)
        drop_pg_database(name)


def measure(workdir: Path, db_url: str, prefix: str, samples: int, baseline_samples: int) -> int:
    runbooks = workdir / "runbooks"
    runbooks.mkdir()
    (runbooks / "probe.yaml").write_text(RUNBOOK)
    (runbooks / "storm.triggers.yaml").write_text(rules_file())
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")},
           "RUNBOOKD_HOME": str(workdir / "home"), "RUNBOOKD_DATABASE_URL": db_url, "RUNBOOKD_REDIS_URL": REDIS_URL,
           "RUNBOOKD_REDIS_PREFIX": prefix, "RUNBOOKD_RUNBOOKS_DIR": str(runbooks), "RUNBOOKD_PORT": str(port),
           "RUNBOOKD_LOG_LEVEL": "WARNING"}
    engine = make_engine(db_url)
    admin = Actor(name="bench", role=Role.admin, source=Source.cli)
    with session_scope(engine) as session:
        _t, hook_token = auth.create_token(session, name="bench-hook", role=Role.hook, actor=admin)
        _t, operator_token = auth.create_token(session, name="bench-op", role=Role.operator, actor=admin)
    log = (workdir / "api.log").open("wb")
    api = subprocess.Popen([sys.executable, "-m", "server.cli", "api"], env=env, stdout=log,
                           stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    hook_headers = {"Authorization": f"Bearer {hook_token}", "Content-Type": "application/json"}
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            wait_for(lambda: _answers(client), 60, "the api")
            op = {"Authorization": f"Bearer {operator_token}"}

            def post_run() -> float:
                started = time.perf_counter()
                response = client.post("/api/v1/runs", json={"runbook": "probe", "params": {"service": "b"}},
                                       headers=op)
                assert response.status_code == 202, response.text
                return time.perf_counter() - started

            for _ in range(5):
                post_run()
            baseline = [post_run() for _ in range(baseline_samples)]

            names = [f"A{i}" for i in range(RULES)]
            timings, started_counts = [], []
            api_process = psutil.Process(api.pid)
            cpu_before = sum(api_process.cpu_times()[:2])
            for _ in range(5):
                post_run()
            baseline_cpu = (sum(api_process.cpu_times()[:2]) - cpu_before) / 5
            steady_cpu = 0.0
            for index in range(samples):
                cpu_before = sum(api_process.cpu_times()[:2])
                body = delivery(names, ALERTS)
                began = time.perf_counter()
                response = client.post("/hooks/alertmanager", content=body, headers=hook_headers)
                timings.append(time.perf_counter() - began)
                if index:
                    steady_cpu += sum(api_process.cpu_times()[:2]) - cpu_before
                assert response.status_code == 200, response.text
                started_counts.append(response.json()["started"])

            dup_body = delivery([f"D{i}" for i in range(10)], 100)
            with ThreadPoolExecutor(COPIES) as pool:
                answers = list(pool.map(lambda _i: httpx.post(f"{base}/hooks/alertmanager", content=dup_body,
                                                              headers=hook_headers, timeout=60), range(COPIES)))
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        with engine.connect() as conn:
            dup_runs = conn.execute(text("SELECT count(*) FROM trigger_firings WHERE rule_id LIKE 'dup-%'")).scalar()
            distinct = conn.execute(text("SELECT count(DISTINCT (rule_id, fingerprint)) FROM trigger_firings "
                                         "WHERE rule_id LIKE 'dup-%'")).scalar()
            run_rows = conn.execute(text("SELECT count(*) FROM runs WHERE idempotency_key LIKE 'trigger:%'")).scalar()
            firing_runs = conn.execute(text("SELECT count(*) FROM trigger_firings WHERE action = 'run'")).scalar()
    finally:
        stop_process(api)
        log.close()
        engine.dispose()
    started_by_copies = sum(a.json()["started"] for a in answers)
    duplicates = (dup_runs or 0) - (distinct or 0) + (started_by_copies - 100 if started_by_copies > 100 else 0)
    p50, p95 = statistics.median(timings) * 1000, percentile(timings, 95) * 1000
    b50, b95 = statistics.median(baseline) * 1000, percentile(baseline, 95) * 1000
    print(f"baseline POST /api/v1/runs (one run):           p50 {b50:7.2f} ms  p95 {b95:7.2f} ms  "
          f"({baseline_samples} samples)")
    print(f"{ALERTS}-alert delivery vs {RULES} rules:             p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  "
          f"max {max(timings) * 1000:.2f} ms  ({samples} deliveries)")
    print(f"  first delivery: {timings[0] * 1000:.2f} ms, {started_counts[0]} runs started (200 incidents opened); "
          f"later deliveries started {sum(started_counts[1:])} (max_runs_per_minute: 2 per rule)")
    print(f"  ratio to the baseline: p50 {p50 / b50:.1f}x  p95 {p95 / b95:.1f}x  "
          f"(one run: {b50:.2f} ms; per alert in a delivery: {p50 / ALERTS:.3f} ms)")
    print(f"  api CPU per request (user+system, load-independent): one run {baseline_cpu * 1000:.1f} ms; "
          f"a 1,000-alert delivery (after the first) {steady_cpu / max(samples - 1, 1) * 1000:.1f} ms; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{COPIES} concurrent copies of a 100-alert delivery: {started_by_copies} runs started, "
          f"{dup_runs} firings for {distinct} distinct alerts x rules, duplicate runs: {duplicates}; "
          f"runs with a trigger key {run_rows} = firings with a run {firing_runs}")
    targets = Targets("alert_ingest")
    targets.at_most(f"p95 of a {ALERTS}-alert delivery", p95, TARGET_P95_MS, "ms")
    targets.check(f"zero duplicate runs ({duplicates} duplicates)", duplicates == 0)
    targets.check(f"every run of the concurrent copies started once ({started_by_copies} of 100)",
                  started_by_copies == 100)
    targets.check(f"one run per firing ({run_rows} runs with a trigger key, {firing_runs} firings with a run)",
                  run_rows == firing_runs)
    return targets.verdict()


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
