"""Each shipped debugging runbook, run over the API by a real worker against examples/faulty-service with its
fault switched on through a flag: the run's outputs must name the fault. Durations are printed (-s) for the
notes: `python -m pytest tests/runbooks -s -k e2e`."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.runbooks.conftest import explain, fault, run, set_fault, start_service, stop_service
from tests.support import REPO, cli, prometheus_server, steps, wait_for
from tests.workers.steps.test_git_bisect import PLANTED, build_repo
from tests.workers.steps.toolkit_support import ptrace_problem


def timed_run(stack, runbook: str, params: dict, timeout: float = 60) -> dict:
    started = time.monotonic()
    done = run(stack, runbook, params, timeout)
    print(f"\n[e2e] {runbook}: {done['status']} in {time.monotonic() - started:.1f}s")
    return done


def fault_seen(service, name: str) -> bool:
    """What faulty-service itself last said of the fault ("fault NAME is now on/off" in its log, written when the
    value it reads changes); off until it has said anything."""
    said = False
    if service.log.exists():
        for line in service.log.read_text().splitlines():
            if '"faulty.faults"' in line:
                record = json.loads(line)
                if record.get("fault") == name:
                    said = bool(record.get("enabled"))
    return said


def ofrep_value(stack, key: str) -> object:
    response = httpx.post(f"{stack.url}/ofrep/v1/evaluate/flags/{key}", json={"context": {}}, timeout=10,
                          headers={"Authorization": f"Bearer {stack.client_token}"})
    return response.json().get("value") if response.status_code == 200 else response.status_code


def traffic(service, ids) -> list[int]:
    with httpx.Client(base_url=service.url, timeout=10) as client:
        return [client.get(f"/api/orders/{i}").status_code for i in ids]


def test_error_spike_finds_the_error_group_and_raises_verbosity(stack, service):
    with fault(stack, "errors"):
        wait_for(lambda: traffic(service, [2]) == [500], 10, "the errors fault to take effect")
        statuses = traffic(service, range(1, 31))
        assert statuses.count(500) == 17  # 15 even ids (InventoryTimeout) + 7 and 21 (StaleCache)
        done = timed_run(stack, "error-spike", {"logs": str(service.log), "verbosity_for": "2m"})
    assert done["status"] == "succeeded", explain(done)
    out = done["outputs"]
    assert out["top_error"] == "InventoryTimeout" and out["top_error_count"] >= 15
    by_id = steps(done)
    assert {g["error"] for g in by_id["errors"]["outputs"]["groups"]} == {"InventoryTimeout", "StaleCache"}
    # Following the request id finds its whole story: the access line and the error line at least.
    story = by_id["follow"]["outputs"]["matches"]
    assert len(story) >= 2 and {m["request_id"] for m in story} == {out["request_id"]}
    assert {m["logger"] for m in story} >= {"faulty.http"}
    assert by_id["debug-flowing"]["outputs"]["matched"] > 0
    levels = stack.operator.get("/api/v1/loglevels/faulty-service").json()
    assert "DEBUG" in str(levels)


# faulty-service exports no metrics, so the p99 step reads a real histogram Prometheus keeps of itself.
SELF_P99 = "histogram_quantile(0.99, sum by (le) (prometheus_http_request_duration_seconds_bucket))"


def test_latency_regression_names_the_slow_query(stack, service, tmp_path):
    with fault(stack, "slow"), prometheus_server(tmp_path / "prometheus") as prometheus:
        wait_for(lambda: httpx.get(f"{service.url}/api/orders/3", timeout=10).elapsed.total_seconds() > 0.7, 10,
                 "the slow fault to take effect")
        done = timed_run(stack, "latency-regression", {"base_url": service.url, "path": "/api/orders/5",
                                                       "logs": str(service.log), "threshold_ms": 500,
                                                       "prometheus_url": prometheus, "latency_query": SELF_P99})
    assert done["status"] == "succeeded", explain(done)
    out = done["outputs"]
    assert out["reproduced"] is True and out["latency_ms"] > 700
    assert out["slow_query"] == "orders.by_id" and out["slow_query_count"] >= 1
    p99 = steps(done)["p99"]
    assert p99["status"] == "succeeded", explain(done)
    assert p99["outputs"]["result_type"] == "matrix" and p99["outputs"]["series"]
    assert 0 < p99["outputs"]["value"] < 0.5 and p99["outputs"]["verdict"] == "ok", p99["outputs"]


def test_latency_regression_without_the_fault_is_not_reproduced(stack, service):
    done = timed_run(stack, "latency-regression", {"base_url": service.url, "path": "/api/orders/5",
                                                   "logs": str(service.log), "since": "1s"})
    assert done["status"] == "succeeded", explain(done)
    assert done["outputs"]["reproduced"] is False
    assert steps(done)["over-threshold"]["status"] == "failed"


def test_cpu_hotspot_names_the_hot_function(stack, service):
    problem = ptrace_problem(service.process.pid)
    if problem:
        pytest.skip(problem)
    with fault(stack, "cpu"):
        # The background job polls its flags every 0.5 s; it spins from the moment it has seen the fault on.
        wait_for(lambda: fault_seen(service, "cpu"), 10, "faulty-service to see the cpu fault on")
        done = timed_run(stack, "cpu-hotspot", {"pid_file": str(service.pid_file), "duration": "3s"})
    assert done["status"] == "succeeded", explain(done)
    assert done["outputs"]["hottest"] == "score_recommendations", steps(done)["profile"]["outputs"]["top_own"]
    assert done["outputs"]["pid"] == service.process.pid
    flame = stack.operator.get(f"/api/v1/runs/{done['id']}/artifacts/{done['outputs']['flamegraph']}")
    assert flame.status_code == 200 and b"score_recommendations" in flame.content
    threads = {t["name"] for t in steps(done)["threads"]["outputs"]["threads"]}
    assert "background-jobs" in threads


def test_memory_leak_without_the_fault_is_stable(stack, service):
    if ptrace_problem(service.process.pid):
        pytest.skip("py-spy cannot attach here (the runbook's stack dump needs it)")
    # Any background fault an earlier test switched on is seen as off again (the background job polls every 0.5 s).
    wait_for(lambda: not fault_seen(service, "leak") and not fault_seen(service, "cpu"), 10,
             "faulty-service to see the leak and cpu faults off")
    done = timed_run(stack, "memory-leak", {"pid_file": str(service.pid_file), "window": "2s", "interval": "250ms"})
    assert done["outputs"]["verdict"] == "stable", done["outputs"]
    assert steps(done)["leaking"]["status"] == "failed"


def test_memory_leak_calls_the_leaking_process_leaking(stack, service):
    if ptrace_problem(service.process.pid):
        pytest.skip("py-spy cannot attach here (the runbook's stack dump needs it)")
    with fault(stack, "leak"):
        wait_for(lambda: fault_seen(service, "leak"), 10, "faulty-service to see the leak fault on")
        done = timed_run(stack, "memory-leak", {"pid_file": str(service.pid_file), "window": "4s",
                                                "interval": "250ms"})
    assert done["status"] == "succeeded", explain(done)
    assert done["outputs"]["verdict"] == "leaking", done["outputs"]
    assert done["outputs"]["growth_mb_per_min"] > 20  # ~150 MiB/min unloaded; the threshold is 10
    assert done["outputs"]["pid"] == service.process.pid


def test_kill_switch_turns_the_fault_off_and_keeps_it_off(stack, service):
    with fault(stack, "errors"):
        wait_for(lambda: traffic(service, [4]) == [500], 10, "the errors fault to take effect")
        done = timed_run(stack, "kill-switch", {"flag": "faulty-errors", "verify_url": f"{service.url}/api/orders/4",
                                                "for": "10m", "settle": "15s"})
        assert done["status"] == "succeeded", explain(done)
        assert done["outputs"]["was_failing"] is True and done["outputs"]["expires_at"]
        flag = stack.operator.get("/api/v1/flags/faulty-errors").json()
        assert flag["spec"]["environments"]["production"]["enabled"] is False
        assert traffic(service, [4]) == [200]


def test_kill_switch_rolls_back_when_the_switch_does_not_help(stack, service):
    with fault(stack, "slow"):
        # Switching off `errors` cannot make a 404 path answer 200: the check fails and the flag comes back.
        set_fault(stack, "errors", True)
        try:
            done = timed_run(stack, "kill-switch", {"flag": "faulty-errors", "settle": "3s",
                                                    "verify_url": f"{service.url}/no-such-page"})
            assert done["status"] == "failed", explain(done)
            assert steps(done)["switch-off"]["compensated"] == "done", explain(done)
            flag = stack.operator.get("/api/v1/flags/faulty-errors").json()
            assert flag["spec"]["environments"]["production"]["enabled"] is True
        finally:
            set_fault(stack, "errors", False)


def test_find_breaking_commit_names_the_planted_commit(stack, tmp_path):
    repo = tmp_path / "shop"
    hashes = build_repo(repo)
    done = timed_run(stack, "find-breaking-commit", {"repo": str(repo), "good": hashes[0],
                                                     "test": [sys.executable, "test_calc.py"]})
    assert done["status"] == "succeeded", explain(done)
    assert done["outputs"]["commit"] == hashes[PLANTED - 1]
    assert done["outputs"]["subject"] == f"change {PLANTED}: tweak add()"
    assert done["outputs"]["steps"] <= 8


@pytest.mark.skipif(not (shutil.which("gdb") and shutil.which("gcc")), reason="needs gdb and gcc (apt-get install)")
def test_crash_postmortem_finds_the_crashing_frame(stack, tmp_path):
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if core_pattern.startswith("|") or "/" in core_pattern:
        pytest.skip(f"kernel core_pattern {core_pattern!r} does not leave cores in the process's directory")
    crashing = start_service(stack, tmp_path / "crashing")
    try:
        with fault(stack, "crash"):
            # The crashing service asks for the flag at checkout: wait until runbookd answers it on (the api's
            # flag cache follows the change's notice), asked as the service asks it.
            wait_for(lambda: ofrep_value(stack, "faulty-crash") is True, 10, "runbookd to serve the crash fault on")
            with pytest.raises(httpx.HTTPError):
                httpx.post(f"{crashing.url}/api/checkout", json={"cents": 1200}, timeout=10)
            crashing.process.wait(20)
        assert crashing.process.returncode == -11  # SIGSEGV
        wait_for(lambda: any(crashing.home.glob("core*")), 30, "the kernel to write the core")
        done = timed_run(stack, "crash-postmortem", {"core": str(crashing.home / "core*"), "binary": sys.executable,
                                                     "logs": str(crashing.log)}, timeout=120)
    finally:
        stop_service(crashing)
    assert done["status"] == "succeeded", explain(done)
    out = done["outputs"]
    assert out["signal"] == "SIGSEGV"
    assert out["function"] == "compute_discount" and out["file"].endswith("pricing.c"), out
    last_words = steps(done)["last-words"]["outputs"]["matches"]
    assert any("native pricing" in m["message"] for m in last_words)


def test_every_shipped_runbook_validates():
    runbooks = sorted((REPO / "runbooks").glob("*.yaml"))
    assert {p.stem for p in runbooks} >= {"latency-regression", "error-spike", "find-breaking-commit", "cpu-hotspot",
                                          "memory-leak", "crash-postmortem", "kill-switch"}
    # In-process (tests.support.cli): the command's own checks and exit status, without a second interpreter.
    done = cli(["runbooks", "validate", *map(str, runbooks)], {})
    assert done.returncode == 0, done.stdout + done.stderr
