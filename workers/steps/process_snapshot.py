from __future__ import annotations

from typing import Any

from server.runbooks.toolkit_kinds import ProcessSnapshotInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import proc
from workers.toolkit.artifacts import artifact, ref
from workers.toolkit.targets import exe_of, process_label, resolve_pid


@register("process.snapshot")
class ProcessSnapshot(Step[ProcessSnapshotInputs]):
    def run(self, inputs: ProcessSnapshotInputs, ctx: StepContext) -> dict[str, Any]:
        gcore = proc.find_tool("gcore", "apt-get install gdb (gcore ships with it)")
        pid = resolve_pid(inputs)
        binary = exe_of(pid)
        prefix = artifact(ctx, "core")
        ctx.emit(f"snapshotting pid {pid} ({process_label(pid)}); it is paused while gcore writes the core")
        done = proc.run([gcore, "-o", str(prefix), str(pid)], ctx, timeout=inputs.timeout.total_seconds(),
                        check=False)
        core = prefix.with_name(f"{prefix.name}.{pid}")
        if done.returncode != 0 or not core.is_file():
            raise StepFailed(f"gcore could not snapshot pid {pid}: {done.tail()}")
        size = core.stat().st_size
        ctx.emit(f"wrote {core} ({size / 1024 / 1024:.1f} MiB)")
        return {"pid": pid, "core": str(core), "binary": binary, "size_bytes": size,
                "files": {"core": ref(core)}}
