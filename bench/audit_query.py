"""Audit search as history grows: 1,000,000 events in PostgreSQL, filtered queries' p50/p95.

Baseline, measured in the same run on the same connection: a primary-key lookup of one event.
Target (issue 5): p95 under 50 ms for filters by incident, by actor and by time range.

    .venv/bin/python bench/audit_query.py [--events 1000000] [--queries 200]

Uses PostgreSQL at RUNBOOKD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres) in a
database it creates and drops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psycopg
from _verdict import Targets, cannot_measure  # bench/ is on sys.path as the script's directory
from sqlmodel import Session

from server.audit.models import AuditEvent
from server.audit.service import AuditFilter, query, verify
from server.db import make_engine
from server.migrate import upgrade
from tests.support import create_pg_database, drop_pg_database, postgres_problem

ACTORS = [f"user-{i}" for i in range(200)] + ["system"]
ACTIONS = ["run.create", "flag.update", "loglevel.create", "token.create", "run.cancel", "flag.rollback"]


def load(url: str, events: int) -> tuple[datetime, datetime]:
    """COPY a valid hash chain of `events` events spread over 180 days, 1 in 50 under one of 2,000 incidents."""
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=180)
    step = timedelta(days=180) / events
    buf = io.StringIO()
    prev = "0" * 64
    for i in range(1, events + 1):
        ts = start + step * i
        incident = f"INC-{rng.randrange(2000)}" if rng.random() < 0.02 else None
        row = {"id": i, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "actor": rng.choice(ACTORS), "source": "api",
               "action": rng.choice(ACTIONS), "target_type": "flag", "target_id": f"flag-{rng.randrange(350)}",
               "before": None, "after": {"enabled": rng.random() < 0.5}, "reason": None,
               "incident_id": incident, "request_id": None}
        digest = hashlib.sha256(prev.encode() + b"\n" + orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()
        after = orjson.dumps(row["after"]).decode()
        buf.write(f"{i}\t{ts.isoformat()}\t{row['actor']}\tapi\t{row['action']}\tflag\t{row['target_id']}\t\\N\t"
                  f"{after}\t\\N\t{incident or chr(92) + 'N'}\t\\N\t{prev}\t{digest}\n")
        prev = digest
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        with conn.cursor().copy(
            "COPY audit_events (id, ts, actor, source, action, target_type, target_id, before, after, reason, "
            "incident_id, request_id, prev_hash, hash) FROM STDIN"
        ) as copy:
            copy.write(buf.getvalue())
        conn.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), %s)", (events,))
        conn.execute("UPDATE audit_head SET last_id = %s, last_hash = %s WHERE id = 1", (events, prev))
        conn.execute("ANALYZE audit_events")
    return start, start + step * events


def timed(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    problem = postgres_problem()
    if problem:
        return cannot_measure("audit_query", problem)
    targets = Targets("audit_query")
    name, url = create_pg_database()
    try:
        upgrade(url)
        t0 = time.perf_counter()
        first, last = load(url, args.events)
        print(f"loaded {args.events:,} chained events in {time.perf_counter() - t0:.1f}s")
        engine = make_engine(url)
        rng = random.Random(11)
        with Session(engine) as session:
            def by_pk() -> None:
                session.get(AuditEvent, rng.randrange(1, args.events))
                session.expunge_all()

            def filtered(**kw: object) -> None:
                query(session, filters=AuditFilter(**kw), before_id=None, limit=100)  # type: ignore[arg-type]

            def window() -> AuditFilter:
                since = first + (last - first) * rng.random()
                return AuditFilter(since=since, until=since + timedelta(hours=6))

            cases = {
                "primary key (baseline)": by_pk,
                "by incident": lambda: filtered(incident_id=f"INC-{rng.randrange(2000)}"),
                "by actor": lambda: filtered(actor=rng.choice(ACTORS)),
                "by actor + action": lambda: filtered(actor=rng.choice(ACTORS), action="flag.update"),
                "by 6h time range": lambda: query(session, filters=window(), before_id=None, limit=100),
                "by incident, page 2": lambda: query(session, filters=AuditFilter(incident_id="INC-1"),
                                                     before_id=args.events // 2, limit=100),
            }
            for fn in cases.values():  # warm the caches once
                timed(fn, 5)
            baseline_p95 = None
            print(f"{'query':24} {'p50 ms':>8} {'p95 ms':>8} {'x baseline p95':>15}")
            worst = 0.0
            for label, fn in cases.items():
                samples = timed(fn, args.queries)
                p50 = statistics.median(samples)
                p95 = statistics.quantiles(samples, n=20)[18]
                baseline_p95 = baseline_p95 or p95
                if label != "primary key (baseline)":
                    worst = max(worst, p95)
                print(f"{label:24} {p50:8.2f} {p95:8.2f} {p95 / baseline_p95:15.1f}")
            print(f"worst filtered p95: {worst:.2f} ms (target < 50 ms)")
            targets.at_most("worst filtered query p95", worst, 50, " ms")
            t0 = time.perf_counter()
            result = verify(session)
            elapsed = time.perf_counter() - t0
            print(f"audit verify: {result.checked:,} events in {elapsed:.1f}s "
                  f"({result.checked / elapsed:,.0f} events/s), chain {'intact' if result.ok else result.problem}")
            targets.check(f"verify checked all {args.events:,} events and found the chain intact",
                          result.ok and result.checked == args.events)
        engine.dispose()
    finally:
        drop_pg_database(name)
    return targets.verdict()


if __name__ == "__main__":
    sys.exit(main())
