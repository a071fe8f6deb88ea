"""process.snapshot and coredump.analyze on a small C program compiled here: a SIGSEGV crash and a hang."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from server.runbooks.toolkit_kinds import CoredumpAnalyzeInputs, ProcessSnapshotInputs
from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.base import StepFailed
from workers.steps.coredump_analyze import CoredumpAnalyze
from workers.steps.process_snapshot import ProcessSnapshot
from workers.toolkit.proc import allow_core_dumps

SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *background_worker(void *arg) { (void)arg; for (;;) pause(); return NULL; }

__attribute__((noinline)) int parse_record(const char *record) {
    return record[0] + 1;
}

__attribute__((noinline)) void wait_for_input(void) { for (;;) pause(); }

int main(int argc, char **argv) {
    pthread_t worker;
    pthread_create(&worker, NULL, background_worker, NULL);
    usleep(100000); /* let the worker thread reach its own function before the crash */
    if (argc > 1) { puts("ready"); fflush(stdout); wait_for_input(); }
    return parse_record(NULL);
}
"""
CRASH_LINE = 9  # `return record[0] + 1;`

def need(*tools: str) -> None:
    """Skip (a failure under CI=true) the test that needs a missing tool; the others in this file still run."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} needed: apt-get install -y gdb gcc (tests/debian-packages.txt)")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc", "gdb", "gcore")
    where = tmp_path_factory.mktemp("cprog")
    (where / "crashy.c").write_text(SOURCE)
    subprocess.run(["gcc", "-g", "-O0", "-pthread", "-o", "crashy", "crashy.c"], cwd=where, check=True)
    return where / "crashy"


def crash_core(program: Path, where: Path, argv0: str | None = None) -> Path:
    """The kernel's core of a real SIGSEGV when core_pattern writes to the cwd; else gdb stops the same crash and
    writes the core itself (machines whose core_pattern pipes to systemd-coredump or apport)."""
    done = subprocess.run([argv0 or str(program)], cwd=where, preexec_fn=allow_core_dumps, capture_output=True)
    assert done.returncode == -11  # SIGSEGV
    cores = sorted(where.glob("core*"))
    if cores:
        return cores[0]
    core = where / "core.gdb"
    subprocess.run(["gdb", "-nx", "-batch", "-ex", "run", "-ex", f"generate-core-file {core}", str(program)],
                   cwd=where, capture_output=True, check=True, timeout=60)
    return core


def test_crash_gives_the_signal_and_the_crashing_frame(program, tmp_path):
    core = crash_core(program, tmp_path)
    outputs = CoredumpAnalyze().run(CoredumpAnalyzeInputs(core=str(core), binary=str(program)),
                                    make_ctx(tmp_path / "home"))
    assert outputs["signal"] == "SIGSEGV"
    frame = outputs["crashing_frame"]
    assert (frame["function"], Path(frame["file"]).name, frame["line"]) == ("parse_record", "crashy.c", CRASH_LINE)
    (found,) = outputs["findings"]
    assert found["severity"] == "error" and found["evidence"]["artifact"].endswith("gdb.txt")
    assert found["message"].startswith("crashed with SIGSEGV in parse_record at ")
    assert f":{CRASH_LINE}" in found["message"]
    crashed = [t for t in outputs["threads"] if t["crashed"]]
    assert len(crashed) == 1 and [f["function"] for f in crashed[0]["frames"][:2]] == ["parse_record", "main"]
    assert len(outputs["threads"]) == 2
    other = next(t for t in outputs["threads"] if not t["crashed"])
    assert "background_worker" in [f["function"] for f in other["frames"]]


def test_the_binary_is_found_from_the_core_when_not_given(program, tmp_path):
    local = tmp_path / program.name
    shutil.copy(program, local)
    core = crash_core(local, tmp_path, argv0=f"./{program.name}")  # the core names `./crashy`, relative to its cwd
    if core.name == "core.gdb":
        pytest.skip("core_pattern does not write cores to the cwd here, so no core names a relative program")
    outputs = CoredumpAnalyze().run(CoredumpAnalyzeInputs(core=str(core)), make_ctx(tmp_path / "home"))
    assert outputs["binary"] == str(local)
    assert outputs["crashing_frame"]["function"] == "parse_record"


def test_snapshot_of_a_hung_process_then_analysis(program, tmp_path):
    proc = subprocess.Popen([str(program), "hang"], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        ctx = make_ctx(tmp_path / "home", step_id="snap")
        snap = ProcessSnapshot().run(ProcessSnapshotInputs(pid=proc.pid), ctx)
        assert proc.poll() is None, "gcore must leave the process running"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert snap["binary"] == str(program) and snap["size_bytes"] > 0
    assert Path(snap["core"]) == ctx.settings.artifacts_dir / f"run-{ctx.run_id}" / f"snap.1.core.{snap['pid']}"
    assert snap["files"]["core"]["artifact"] == f"snap.1.core.{snap['pid']}"
    outputs = CoredumpAnalyze().run(CoredumpAnalyzeInputs(core=snap["core"], binary=snap["binary"]),
                                    make_ctx(tmp_path / "home"))
    functions = {f["function"] for t in outputs["threads"] for f in t["frames"]}
    assert {"wait_for_input", "main", "background_worker"} <= functions
    assert outputs["signal"] in (None, "SIGSTOP")  # a live snapshot carries no crash signal


def test_bad_inputs_fail_clearly(tmp_path):
    need("gdb", "gcore")  # the steps check their tool before their inputs
    with pytest.raises(StepFailed, match="no core file"):
        CoredumpAnalyze().run(CoredumpAnalyzeInputs(core=str(tmp_path / "nothing")), make_ctx(tmp_path))
    with pytest.raises(StepFailed, match="no process with pid"):
        ProcessSnapshot().run(ProcessSnapshotInputs(pid=2 ** 22 + 17), make_ctx(tmp_path))


def test_analysis_of_a_non_core_fails(tmp_path):
    need("gdb")
    fake = tmp_path / "core"
    fake.write_bytes(b"not an ELF core" * 10)
    started = time.monotonic()
    with pytest.raises(StepFailed, match="gdb could not read"):
        CoredumpAnalyze().run(CoredumpAnalyzeInputs(core=str(fake)), make_ctx(tmp_path))
    assert time.monotonic() - started < 30


def test_a_glob_picks_the_newest_core(program, tmp_path):
    older = tmp_path / "core.1"
    older.write_bytes(b"old")
    os.utime(older, (1, 1))
    core = crash_core(program, tmp_path)
    outputs = CoredumpAnalyze().run(CoredumpAnalyzeInputs(core=str(tmp_path / "core*"), binary=str(program)),
                                    make_ctx(tmp_path / "home"))
    assert outputs["core"] == str(core) and outputs["signal"] == "SIGSEGV"
    with pytest.raises(StepFailed, match="no core file matches"):
        CoredumpAnalyze().run(CoredumpAnalyzeInputs(core=str(tmp_path / "nothing*")), make_ctx(tmp_path))


def test_the_app_frame_skips_system_libraries():
    from workers.steps.coredump_analyze import app_frame, crashing_frame

    frames = [{"function": "__pthread_kill_implementation", "library": "/lib/x86_64-linux-gnu/libc.so.6"},
              {"function": "faulthandler_fatal_error", "library": None},
              {"function": "<signal handler called>", "signal_handler": True, "library": None},
              {"function": "__strlen_evex", "library": "/lib/x86_64-linux-gnu/libc.so.6"},
              {"function": "compute_discount", "library": "/srv/app/libpricing.so"},
              {"function": "ffi_call", "library": "/usr/lib/x86_64-linux-gnu/libffi.so.8"}]
    threads = [{"crashed": True, "frames": frames}]
    crashed = crashing_frame(threads)
    assert crashed["function"] == "__strlen_evex"
    assert app_frame(threads, crashed)["function"] == "compute_discount"
