"""memory.growth against real processes: one that leaks, one that does not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.runbooks.toolkit_kinds import MemoryGrowthInputs
from tests.workers.steps.toolkit_support import make_ctx, start_python, stop
from workers.steps.base import StepFailed, StepInterrupted
from workers.steps.memory_growth import MemoryGrowth, slope

LEAKY = """
import time
cache = []
while True:
    cache.append(bytearray(512 * 1024))  # 0.5 MiB every 50 ms, never freed: ~600 MiB/min
    for block in cache[-1:]:
        block[::4096] = b"x" * len(block[::4096])  # touch each page so it is resident, not just reserved
    time.sleep(0.05)
"""
STEADY = "import time\nbuffer = bytearray(20 * 1024 * 1024)\nwhile True:\n    time.sleep(0.05)\n"


@pytest.fixture
def leaky(tmp_path: Path):
    proc = start_python(LEAKY, tmp_path)
    yield proc
    stop(proc)


def test_a_leaking_process_is_called_leaking(leaky, tmp_path):
    ctx = make_ctx(tmp_path / "home", step_id="rss")
    outputs = MemoryGrowth().run(MemoryGrowthInputs(pid=leaky.pid, window="2s", interval="100ms",
                                                    threshold_mb_per_min=50), ctx)
    assert outputs["verdict"] == "leaking"
    assert 100 < outputs["growth_mb_per_min"] < 1500, outputs["growth_mb_per_min"]  # ~600 unloaded
    assert outputs["end_mb"] > outputs["start_mb"] + 5
    assert outputs["sample_count"] >= 15
    plot = Path(outputs["files"]["plot"]["path"])
    assert plot == ctx.settings.artifacts_dir / f"run-{ctx.run_id}" / "rss.1.rss.svg"
    assert plot.read_text().startswith("<svg") and "leaking" in plot.read_text()


def test_a_steady_process_is_stable(tmp_path):
    proc = start_python(STEADY, tmp_path)
    try:
        time.sleep(0.5)  # past start-up, when the interpreter itself still grows
        outputs = MemoryGrowth().run(MemoryGrowthInputs(pid=proc.pid, window="1500ms", interval="100ms"),
                                     make_ctx(tmp_path))
    finally:
        stop(proc)
    assert outputs["verdict"] == "stable"
    assert abs(outputs["growth_mb_per_min"]) < 10


def test_fail_on_leak_fails_with_the_measurements(leaky, tmp_path):
    with pytest.raises(StepFailed, match="MiB/min") as failed:
        MemoryGrowth().run(MemoryGrowthInputs(pid=leaky.pid, window="1s", interval="100ms", threshold_mb_per_min=50,
                                              fail_on_leak=True), make_ctx(tmp_path))
    assert failed.value.outputs["verdict"] == "leaking"


def test_cancel_stops_sampling_at_once(leaky, tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.cancelled.set()
    started = time.monotonic()
    with pytest.raises(StepInterrupted):
        MemoryGrowth().run(MemoryGrowthInputs(pid=leaky.pid, window="60s"), ctx)
    assert time.monotonic() - started < 2


def test_slope_is_least_squares():
    assert slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2)
    assert slope([(0, 5), (0, 5)]) == 0
