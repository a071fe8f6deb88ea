# ruff: noqa: E402  (imports follow the sys.path set-up, as a script run from anywhere needs)
"""Console pages against the JSON API calls that return the same data, with 100,000 runs and 1,000,000
audit events in PostgreSQL and 350 flags.

Pairs, each measured in the same run, interleaved (page, API, page, API...) on one live api (uvicorn on
loopback) so both see the same database, caches and machine load:
  runs list     GET /ui/runs             vs GET /api/v1/runs?limit=50
  run page      GET /ui/runs/{id}        vs GET /api/v1/runs/{id}
  flags list    GET /ui/flags            vs GET /api/v1/flags
  audit page    GET /ui/audit            vs GET /api/v1/audit?limit=50
Times are request round trips on loopback with a kept-alive connection (server time plus a loopback hop,
the same for both sides). Target (issue 16): each page's p95 within 2x of its API call's and under 100 ms.

Seeding: audit events and runs (three steps each) go in with COPY (the audit rows as a valid hash chain,
by bench/audit_query.py's loader); the 350 flags through the flags service, so they are real versions.

    .venv/bin/python bench/ui_pages.py [--runs 100000] [--events 1000000] [--requests 200]

Uses PostgreSQL at RUNBOOKD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres) in a
database it creates and drops.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import httpx
import psycopg
from _verdict import Targets, cannot_measure  # bench/ is on sys.path as the script's directory
from audit_query import load as load_audit  # the 1M-event chain loader, shared with that bench

from server.app import create_app
from server.auth import service as auth
from server.auth.models import Actor, Role
from server.db import make_engine, session_scope
from server.flags import service as flags
from server.flags.models import FlagCreate
from server.migrate import upgrade
from server.settings import Settings
from tests.support import create_pg_database, drop_pg_database, postgres_problem, serve

RUNBOOKS = ["http-health-triage", "kill-switch", "memory-leak", "cpu-hotspot", "error-spike"]
STATUSES = ["succeeded"] * 8 + ["failed", "cancelled"]
DEFINITION = "title: seeded\nsteps:\n  - {id: a, uses: log, with: {message: a}}\n"


def load_runs(url: str, runs: int) -> None:
    rng = random.Random(5)
    start = datetime.now(UTC) - timedelta(days=90)
    step = timedelta(days=90) / runs
    run_buf, step_buf = io.StringIO(), io.StringIO()
    step_id = 0
    for i in range(1, runs + 1):
        created = start + step * i
        finished = created + timedelta(seconds=rng.uniform(0.5, 60))
        incident = f"INC-{rng.randrange(500)}" if rng.random() < 0.05 else "\\N"
        run_buf.write(f"{i}\t{rng.choice(RUNBOOKS)}\t{'0' * 64}\t{DEFINITION.encode('unicode_escape').decode()}\t"
                      f'{{"base_url": "https://svc-{i % 40}.example"}}\t{rng.choice(STATUSES)}\tuser-{i % 60}\t'
                      f"{incident}\tf\trunbookd\t{created.isoformat()}\t{created.isoformat()}\t"
                      f"{finished.isoformat()}\n")
        for position, (sid, uses, phase) in enumerate([("reproduce", "http.request", "reproduce"),
                                                       ("observe", "log", "observe"), ("verify", "assert", "verify")]):
            step_id += 1
            step_buf.write(f"{step_id}\t{i}\t{sid}\t{position}\t{uses}\t{phase}\tsucceeded\t1\t{created.isoformat()}\t"
                           f'{finished.isoformat()}\t{{"status": 200, "elapsed_ms": 12.5}}\n')
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        with conn.cursor().copy("COPY runs (id, runbook_id, runbook_hash, definition, params, status, actor, "
                                "incident_id, dry_run, queue, created_at, started_at, finished_at) FROM STDIN") as copy:
            copy.write(run_buf.getvalue())
        with conn.cursor().copy("COPY step_runs (id, run_id, step_id, position, uses, phase, status, attempts, "
                                "started_at, finished_at, outputs) FROM STDIN") as copy:
            copy.write(step_buf.getvalue())
        conn.execute("SELECT setval(pg_get_serial_sequence('runs', 'id'), %s)", (runs,))
        conn.execute("SELECT setval(pg_get_serial_sequence('step_runs', 'id'), %s)", (step_id,))
        conn.execute("ANALYZE runs")
        conn.execute("ANALYZE step_runs")


def load_flags(engine: object, count: int) -> None:
    actor = Actor.system()
    with session_scope(engine) as session:  # type: ignore[arg-type]
        for i in range(count):
            body = FlagCreate.model_validate({
                "key": f"bench-flag-{i:03d}", "type": "boolean", "variants": {"on": True, "off": False},
                "default_variant": "off", "description": f"seeded flag {i}", "tags": [f"team-{i % 7}"],
                "environments": {"production": {"enabled": i % 3 == 0, "rules": [
                    {"conditions": [{"attribute": "plan", "operator": "in", "value": ["beta"]}], "variant": "on"}]}},
                "reason": "bench"})
            flags.create_flag(session, body=body, actor=actor)


def sign_in(client: httpx.Client, token: str) -> None:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/sign-in").text).group(1)  # type: ignore[union-attr]
    assert client.post("/ui/sign-in", data={"csrf": csrf, "token": token}).status_code == 303


def measure(client: httpx.Client, api: httpx.Client, page: str, call: str, n: int) -> tuple[list[float], list[float]]:
    pages, calls = [], []
    for _ in range(5):  # warm-up
        client.get(page), api.get(call)
    for _ in range(n):
        for target, path, samples in ((client, page, pages), (api, call, calls)):
            t0 = time.perf_counter()
            response = target.get(path)
            samples.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return pages, calls


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--flags", type=int, default=350)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    problem = postgres_problem()
    if problem:
        return cannot_measure("ui_pages", problem)
    name, url = create_pg_database()
    try:
        upgrade(url)
        t0 = time.perf_counter()
        load_audit(url, args.events)
        print(f"seeded {args.events:,} chained audit events (COPY) in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        load_runs(url, args.runs)
        print(f"seeded {args.runs:,} runs with {args.runs * 3:,} steps (COPY) in {time.perf_counter() - t0:.1f}s")
        engine = make_engine(url)
        t0 = time.perf_counter()
        load_flags(engine, args.flags)
        with session_scope(engine) as session:
            _t, token = auth.create_token(session, name="bench-admin", role=Role.admin, actor=Actor.system())
        engine.dispose()
        print(f"created {args.flags} flags through the service in {time.perf_counter() - t0:.1f}s")
        home = Path(f"/tmp/runbookd-bench-ui-{name}")
        settings = Settings(home=home, database_url=url, redis_url=None, log_format="json", log_level="WARNING")
        run_id = args.runs // 2
        pairs = {
            "runs list": ("/ui/runs", "/api/v1/runs?limit=50"),
            "run page": (f"/ui/runs/{run_id}", f"/api/v1/runs/{run_id}"),
            "flags list": ("/ui/flags", "/api/v1/flags"),
            "audit page": ("/ui/audit", "/api/v1/audit?limit=50"),
        }
        targets = Targets("ui_pages")
        with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client, \
                httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}) as api:
            sign_in(client, token)
            print(f"{'page':12} {'page p50':>9} {'page p95':>9} {'API p50':>8} {'API p95':>8} "
                  f"{'p95 ratio':>9}  verdict")
            for label, (page, call) in pairs.items():
                pages, calls = measure(client, api, page, call, args.requests)
                ratio = p95(pages) / p95(calls)
                ok = targets.at_most(f"{label} p95 / API p95", ratio, 2.0, "x")
                ok = targets.check(f"{label} p95 {p95(pages):.2f}ms < 100ms", p95(pages) < 100) and ok
                print(f"{label:12} {statistics.median(pages):9.1f} {p95(pages):9.1f} {statistics.median(calls):8.1f} "
                      f"{p95(calls):8.1f} {ratio:9.2f}  {'PASS' if ok else 'FAIL'}")
        print("(ms, request round trips on loopback; target: page p95 <= 2x its API call's p95 and < 100 ms)")
    finally:
        drop_pg_database(name)
    return targets.verdict()


if __name__ == "__main__":
    sys.exit(main())
