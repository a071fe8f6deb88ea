"""The test suite's own machinery: processes it starts never outlive a failed start-up, skips and marks."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from tests.support import processes, wait_for


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_processes_started_are_stopped_when_start_up_times_out():
    pids = []
    with pytest.raises(TimeoutError), processes(grace=5) as spawn:
        for _ in range(2):  # a worker and a beat, say, that never become ready
            pids.append(spawn([sys.executable, "-c", "import time; time.sleep(600)"]).pid)
        wait_for(lambda: False, 0.2, "a worker that never says ready")
    assert all(_gone(pid) for pid in pids), [p for p in pids if not _gone(p)]


def test_a_process_that_ignores_sigterm_is_killed():
    with processes(grace=0.5) as spawn:
        stubborn = spawn([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                                "print('ready', flush=True); time.sleep(600)"], stdout=-1)
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    stubborn.stdout.close()
    assert _gone(stubborn.pid)


class _Harness:
    """A tests/ class that starts a process in a method, as tests/server/restarts/harness.py's do."""

    def start(self) -> None:
        subprocess.Popen(["true"]).wait()


def _uses_a_harness() -> None:
    _Harness().start()


def test_a_test_that_starts_processes_through_a_tests_class_is_marked_processes(request):
    from tests.conftest import _needs

    assert "processes" in _needs(_uses_a_harness)  # so `make test-fast` leaves it out
    restart_tests = [item for item in request.session.items if "/restarts/" in str(item.path)]
    assert all(item.get_closest_marker("processes") for item in restart_tests), restart_tests
