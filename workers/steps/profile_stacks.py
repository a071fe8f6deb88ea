from __future__ import annotations

from typing import Any

import orjson

from server.runbooks.toolkit_kinds import ProfileStacksInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.steps.profile_cpu import PY_SPY_HINT
from workers.toolkit import proc
from workers.toolkit.artifacts import artifact, ref, within
from workers.toolkit.targets import process_label, resolve_pid

MAX_FRAMES = 40  # per thread in the outputs; the artifact has them all


def _thread(raw: dict[str, Any]) -> dict[str, Any]:
    frames = [{"function": f.get("name"), "file": f.get("filename"), "line": f.get("line"),
               **({"locals": f["locals"]} if f.get("locals") else {})} for f in raw.get("frames", [])]
    return {"thread_id": raw.get("thread_id"), "os_thread_id": raw.get("os_thread_id"), "pid": raw.get("pid"),
            "name": raw.get("thread_name"), "active": raw.get("active"), "owns_gil": raw.get("owns_gil"),
            "frames": frames[:MAX_FRAMES]}


@register("profile.stacks")
class ProfileStacks(Step[ProfileStacksInputs]):
    def run(self, inputs: ProfileStacksInputs, ctx: StepContext) -> dict[str, Any]:
        py_spy = proc.find_tool("py-spy", PY_SPY_HINT)
        pid = resolve_pid(inputs)
        argv = [py_spy, "dump", "--pid", str(pid), "--json"]
        argv += ["--locals"] * inputs.locals + ["--subprocesses"] * inputs.subprocesses
        done = proc.run(argv, ctx, timeout=inputs.timeout.total_seconds(), check=False)
        if done.returncode != 0:
            raise StepFailed(f"py-spy could not dump pid {pid}: {done.tail()}")
        try:
            raw = orjson.loads(done.stdout)
        except orjson.JSONDecodeError:
            raise StepFailed(f"py-spy dump gave no JSON: {done.tail()}") from None
        path = artifact(ctx, "stacks.json")
        path.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
        threads = [_thread(t) for t in raw]
        for thread in threads:
            top = thread["frames"][0] if thread["frames"] else {}
            ctx.emit(f"thread {thread['name']} ({'active' if thread['active'] else 'idle'}): "
                     f"{top.get('function')} at {top.get('file')}:{top.get('line')}")
        return {"pid": pid, "process": process_label(pid), "threads": within(threads, 40 * 1024),
                "active_threads": sum(1 for t in threads if t["active"]), "files": {"stacks": ref(path)}}
