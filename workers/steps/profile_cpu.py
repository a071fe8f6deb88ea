from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from server.runbooks.toolkit_kinds import ProfileCpuInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import proc, svg
from workers.toolkit.artifacts import artifact, ref
from workers.toolkit.findings import finding
from workers.toolkit.targets import process_label, resolve_pid

PY_SPY_HINT = "pip install py-spy (runbookd depends on it); it also needs ptrace rights (root or CAP_SYS_PTRACE)"

HOT_PERCENT = 30  # one function with this share of the samples is a hotspot worth a warning


def frame_label(frame: dict[str, Any]) -> str:
    """`function (file)`: samples of one function at different lines count as one function."""
    return f"{frame.get('name', '?')} ({frame.get('file', '?')})"


def stacks_of(speedscope: dict[str, Any]) -> Counter[tuple[str, ...]]:
    """Root-first stacks with their sample counts, over every thread's profile."""
    frames = [frame_label(f) for f in speedscope["shared"]["frames"]]
    stacks: Counter[tuple[str, ...]] = Counter()
    for profile in speedscope.get("profiles", []):
        # py-spy weighs each sample by its interval in seconds; a sample is a sample, so count them.
        for sample in profile.get("samples", []):
            stacks[tuple(frames[i] for i in sample)] += 1
    return stacks


def top_functions(stacks: Counter[tuple[str, ...]], top: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """By own samples (the function was running) and by total samples (it was anywhere on the stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for stack, n in stacks.items():
        if stack:
            own[stack[-1]] += n
        for name in set(stack):
            total[name] += n
    samples = sum(stacks.values()) or 1

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name.rsplit(" (", 1)[0], "where": name, "own": own[name], "total": total[name],
                 "percent": round(100 * counter[name] / samples, 1)} for name, _n in counter.most_common(top)]

    return rows(own), rows(total)


@register("profile.cpu")
class ProfileCpu(Step[ProfileCpuInputs]):
    def run(self, inputs: ProfileCpuInputs, ctx: StepContext) -> dict[str, Any]:
        py_spy = proc.find_tool("py-spy", PY_SPY_HINT)
        pid = resolve_pid(inputs)
        seconds = max(1, round(inputs.duration.total_seconds()))
        speedscope_path = artifact(ctx, "profile.speedscope.json")
        ctx.emit(f"sampling pid {pid} ({process_label(pid)}) for {seconds}s at {inputs.rate} Hz")
        argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(inputs.rate),
                "--format", "speedscope", "--output", str(speedscope_path)]
        argv += ["--subprocesses"] * inputs.subprocesses + ["--idle"] * inputs.idle + ["--gil"] * inputs.gil
        argv += ["--nonblocking"] * inputs.nonblocking
        done = proc.run(argv, ctx, timeout=seconds + 30, check=False)
        if done.returncode != 0 or not speedscope_path.exists():
            raise StepFailed(f"py-spy could not profile pid {pid}: {done.tail()}")
        stacks = stacks_of(orjson.loads(speedscope_path.read_bytes()))
        samples = sum(stacks.values())
        if not samples:
            raise StepFailed(f"py-spy took no samples of pid {pid}: is it running Python code (try idle: true)?")
        flame_path = artifact(ctx, "flamegraph.svg")
        flame_path.write_text(svg.flamegraph(stacks, f"CPU flamegraph of pid {pid}, {samples} samples, {seconds}s"))
        top_own, top_total = top_functions(stacks, inputs.top)
        ctx.emit(f"hottest function: {top_own[0]['where']} ({top_own[0]['percent']}% of samples)")
        hot = top_own[0]
        frames = "; ".join(f"{t['where']} {t['percent']}%" for t in top_own[:3])
        findings = [finding("warning" if hot["percent"] >= HOT_PERCENT else "info",
                            f"hottest: {hot['where']} takes {hot['percent']}% of {samples} samples (top: {frames})",
                            artifact=flame_path)]
        return {"pid": pid, "samples": samples, "duration_s": seconds, "top_own": top_own, "top_total": top_total,
                "hottest": top_own[0]["function"], "findings": findings,
                "files": {"flamegraph": ref(flame_path), "speedscope": ref(speedscope_path)}}
