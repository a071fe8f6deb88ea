"""profile.cpu and profile.stacks against real Python processes, through py-spy."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from server.runbooks.toolkit_kinds import ProfileCpuInputs, ProfileStacksInputs
from tests.workers.steps.toolkit_support import make_ctx, ptrace_problem, start_python, stop
from workers.steps.base import StepFailed
from workers.steps.profile_cpu import ProfileCpu
from workers.steps.profile_stacks import ProfileStacks

BUSY = """
import sys, time
def burn_cpu(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total
def light_work():
    time.sleep(0.001)
def main():
    open(sys.argv[0] + ".ready", "w").close()
    while True:
        burn_cpu(200_000)
        light_work()
main()
"""

HUNG = """
import sys, threading, time
lock = threading.Lock()
def hold_lock_forever():
    with lock:
        time.sleep(3600)
def wait_for_the_lock():
    with lock:
        pass
threading.Thread(target=hold_lock_forever, name="holder", daemon=True).start()
time.sleep(0.2)
open(sys.argv[0] + ".ready", "w").close()
wait_for_the_lock()
"""


def _ready(proc, tmp: Path) -> None:
    deadline = time.monotonic() + 15
    while not any(p.name.endswith(".ready") for p in tmp.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "target process did not start"
        time.sleep(0.05)


@pytest.fixture
def busy(tmp_path: Path):
    proc = start_python(BUSY, tmp_path)
    _ready(proc, tmp_path)
    problem = ptrace_problem(proc.pid)
    if problem:
        stop(proc)
        pytest.skip(problem)
    yield proc
    stop(proc)


def test_the_hot_function_tops_the_profile(busy, tmp_path):
    ctx = make_ctx(tmp_path / "home", step_id="flame")
    outputs = ProfileCpu().run(ProfileCpuInputs(pid=busy.pid, duration="2s", rate=200), ctx)
    assert outputs["top_own"][0]["function"] == "burn_cpu", outputs["top_own"][:3]
    assert outputs["hottest"] == "burn_cpu"
    assert outputs["top_own"][0]["percent"] > 50
    (found,) = outputs["findings"]
    assert found["severity"] == "warning" and found["message"].startswith("hottest: burn_cpu (")
    assert found["evidence"]["artifact"].endswith("flamegraph.svg")
    assert outputs["samples"] > 100
    by_total = {row["function"]: row for row in outputs["top_total"]}
    assert by_total["main"]["total"] >= by_total["burn_cpu"]["total"]  # main is on every stack
    flame = Path(outputs["files"]["flamegraph"]["path"])
    assert flame == ctx.settings.artifacts_dir / f"run-{ctx.run_id}" / "flame.1.flamegraph.svg"
    assert outputs["files"]["flamegraph"]["artifact"] == "flame.1.flamegraph.svg"
    assert flame.read_text().startswith("<svg") and "burn_cpu" in flame.read_text()
    speedscope = orjson.loads(Path(outputs["files"]["speedscope"]["path"]).read_bytes())
    assert any(frame["name"] == "burn_cpu" for frame in speedscope["shared"]["frames"])


def test_a_process_named_by_its_command_line_or_pid_file(busy, tmp_path):
    script = Path(busy.args[1])
    outputs = ProfileCpu().run(ProfileCpuInputs(process=script.name, duration="1s"), make_ctx(tmp_path))
    assert outputs["pid"] == busy.pid
    pid_file = tmp_path / "busy.pid"
    pid_file.write_text(f"{busy.pid}\n")
    outputs = ProfileCpu().run(ProfileCpuInputs(pid_file=str(pid_file), duration="1s"), make_ctx(tmp_path))
    assert outputs["pid"] == busy.pid


def test_a_missing_process_fails_clearly(tmp_path):
    with pytest.raises(StepFailed, match="no process whose command line contains"):
        ProfileCpu().run(ProfileCpuInputs(process="no-such-program-runbookd-xyz"), make_ctx(tmp_path))
    with pytest.raises(ValueError, match="exactly one of pid, pid_file or process"):
        ProfileCpuInputs(pid=1, process="x")


def test_stack_dump_shows_where_a_hung_process_waits(tmp_path):
    proc = start_python(HUNG, tmp_path)
    try:
        _ready(proc, tmp_path)
        problem = ptrace_problem(proc.pid)
        if problem:
            pytest.skip(problem)
        outputs = ProfileStacks().run(ProfileStacksInputs(pid=proc.pid), make_ctx(tmp_path / "home"))
    finally:
        stop(proc)
    threads = {t["name"]: t for t in outputs["threads"]}
    assert set(threads) == {"MainThread", "holder"}
    assert [f["function"] for f in threads["MainThread"]["frames"]][:2] == ["wait_for_the_lock", "<module>"]
    assert threads["holder"]["frames"][0]["function"] == "hold_lock_forever"
    assert Path(outputs["files"]["stacks"]["path"]).exists()
