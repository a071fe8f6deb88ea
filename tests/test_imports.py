"""Every module of `server` and `workers` imports on its own: no import cycle hides behind an import order.

One fresh interpreter (no project module loaded) preloads the third-party libraries (the main ones, then every
other library module a first child saw our modules import), then forks one child per module (as many at a time
as there are cores); each child imports only that module, so it sees our modules exactly as a fresh
`python -c "import server.x"` would, without paying for the libraries' imports a hundred times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"workers.toolkit.gdb_frames"}  # run inside gdb's own Python (it imports `gdb`), never imported by us

CHILD = r"""
import importlib, json, os, sys, traceback
for lib in ("pydantic", "pydantic_settings", "sqlalchemy", "sqlalchemy.dialects.postgresql", "sqlmodel",
            "fastapi", "fastapi.routing", "starlette", "sse_starlette", "uvicorn", "celery", "celery.app.task",
            "kombu", "kombu.transport.redis", "redis", "redis.asyncio", "httpx", "typer", "rich", "rich.table",
            "yaml", "jinja2", "alembic", "orjson", "psutil", "psycopg", "prometheus_client", "pythonjsonlogger",
            "slack_sdk", "semver", "jsonpatch", "packaging"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
names, running = json.loads(sys.argv[1]), {}
# Every other library module our modules import, found by one child that imports them all, is preloaded too:
# each child then imports only our own code, not fastapi_offline, markdown_it, re2, httpcore, ... once per module.
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    before = set(sys.modules)
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # the child for this module says why
    found = [m for m in sys.modules if m not in before and m.split(".")[0] not in ("server", "workers")]
    with os.fdopen(write, "wb") as out:
        out.write(json.dumps(found).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read, "rb") as survey:
    libraries = json.loads(survey.read() or b"[]")
os.waitpid(pid, 0)
for lib in libraries:
    try:
        importlib.import_module(lib)
    except BaseException:
        pass
assert not [m for m in sys.modules if m.split(".")[0] in ("server", "workers")], "a project module is loaded"
failed = {}
while names or running:
    while names and len(running) < max(2, os.cpu_count() or 1):  # children fit their trace in the pipe
        name = names.pop()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                importlib.import_module(name)
                code, message = 0, b""
            except BaseException:
                code, message = 1, traceback.format_exc().encode()
            os.write(write, message[-4000:])
            os._exit(code)
        os.close(write)
        running[pid] = (name, read)
    pid, status = os.wait()
    name, read = running.pop(pid)
    trace = os.read(read, 65536)
    os.close(read)
    if status != 0:
        failed[name] = trace.decode(errors="replace") or f"exit status {status}"
print(json.dumps(failed))
"""


def modules() -> list[str]:
    found = []
    for package in ("server", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if "migrations" in parts[1:-1] or name.endswith(".migrations.env"):
                continue  # alembic scripts run inside alembic's context, not as importable modules
            if name not in SCRIPTS:
                found.append(name)
    return found


def test_every_module_imports_on_its_own():
    names = modules()
    assert "server.flags.steps" in names and "workers.engine" in names
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(names)], cwd=ROOT, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, "\n\n".join(f"import {name}:\n{trace}" for name, trace in failed.items())
