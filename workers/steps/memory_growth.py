from __future__ import annotations

import time
from typing import Any

import psutil

from server.runbooks.toolkit_kinds import MemoryGrowthInputs
from workers.steps.base import Step, StepContext, StepFailed, StepInterrupted, register
from workers.toolkit import svg
from workers.toolkit.artifacts import artifact, ref
from workers.toolkit.findings import finding
from workers.toolkit.targets import process_label, resolve_pid

MIB = 1024 * 1024
SAMPLES_KEPT = 200  # in the outputs; the plot has them all


def rss(process: psutil.Process, include_children: bool) -> int:
    total = process.memory_info().rss
    if include_children:
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    return int(total)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope: one noisy sample (a GC, an arena returned) moves it little, unlike end - start."""
    n = len(points)
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    var = sum((p[0] - mean_x) ** 2 for p in points)
    return 0.0 if var == 0 else sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / var


@register("memory.growth")
class MemoryGrowth(Step[MemoryGrowthInputs]):
    def run(self, inputs: MemoryGrowthInputs, ctx: StepContext) -> dict[str, Any]:
        pid = resolve_pid(inputs)
        process = psutil.Process(pid)
        window = inputs.window.total_seconds()
        interval = inputs.interval.total_seconds()
        ctx.emit(f"sampling RSS of pid {pid} ({process_label(pid)}) every {interval:g}s for {window:g}s")
        points: list[tuple[float, float]] = []
        started = time.monotonic()
        exited = False
        while True:
            try:
                points.append((time.monotonic() - started, rss(process, inputs.include_children) / MIB))
            except psutil.NoSuchProcess:
                exited = True
                break
            elapsed = time.monotonic() - started
            if elapsed >= window:
                break
            try:
                ctx.sleep(min(interval, window - elapsed))
            except StepInterrupted:
                if len(points) < 2:
                    raise
                break  # out of time: judge what was seen rather than losing it
        if len(points) < 2:
            raise StepFailed(f"process {pid} exited before two samples could be taken")
        rate = slope(points) * 60
        verdict = "leaking" if rate > inputs.threshold_mb_per_min else "stable"
        plot = artifact(ctx, "rss.svg")
        first_x, first_y = points[0]
        threshold = [(x, first_y + inputs.threshold_mb_per_min * (x - first_x) / 60) for x in (first_x, points[-1][0])]
        plot.write_text(svg.line_plot(points, f"RSS of pid {pid}: {rate:+.1f} MiB/min ({verdict})", "RSS (MiB)",
                                      threshold))
        step = max(1, len(points) // SAMPLES_KEPT)
        outputs = {"pid": pid, "samples": [[round(x, 2), round(y, 2)] for x, y in points[::step]],
                   "sample_count": len(points), "start_mb": round(points[0][1], 2), "end_mb": round(points[-1][1], 2),
                   "growth_mb_per_min": round(rate, 3), "threshold_mb_per_min": inputs.threshold_mb_per_min,
                   "verdict": verdict, "exited": exited, "files": {"plot": ref(plot)}}
        outputs["findings"] = [finding(
            "error" if verdict == "leaking" else "info",
            f"pid {pid} RSS {'grows' if verdict == 'leaking' else 'is stable at'} {rate:+.1f} MiB/min "
            f"({points[0][1]:.0f} -> {points[-1][1]:.0f} MiB over {points[-1][0]:.0f}s; threshold "
            f"{inputs.threshold_mb_per_min:g})", artifact=plot)]
        ctx.emit(f"RSS {points[0][1]:.1f} -> {points[-1][1]:.1f} MiB: {rate:+.2f} MiB/min, {verdict}")
        if verdict == "leaking" and inputs.fail_on_leak:
            raise StepFailed(f"pid {pid} grows {rate:.1f} MiB/min, over {inputs.threshold_mb_per_min:g}", outputs)
        return outputs
