"""Inputs of the debugging-toolkit kinds (issue 6): bisect, profiles, core dumps, memory, logs, metrics, replay.

Registered into server/runbooks/kinds.py, imported by server/runbooks/catalog.py; the implementations live in
workers/steps/ (one module per kind) and share helpers in workers/toolkit/.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, model_validator

from server.durations import Duration
from server.runbooks.kinds import StepInputs, register_kind


class ProcessTarget(StepInputs):
    """Exactly one way to name the process to look at."""

    pid: int | None = Field(None, gt=0, description="Process id.")
    pid_file: str | None = Field(None, description="File holding the process id.")
    process: str | None = Field(
        None, description="Text found in the process's command line; the oldest match wins (a server's master).")

    @model_validator(mode="after")
    def _one_target(self) -> ProcessTarget:
        given = [name for name in ("pid", "pid_file", "process") if getattr(self, name) not in (None, "")]
        if len(given) != 1:
            raise ValueError("name the process with exactly one of pid, pid_file or process")
        return self


class GitBisectInputs(StepInputs):
    repo: str = Field(description="Local path or URL of the repository; it is cloned, never changed.")
    good: str = Field(description="A commit (hash, tag, branch) known to be good.")
    bad: str = Field("HEAD", description="A commit known to be bad.")
    test: list[str] = Field(min_length=1, description=(
        "Program and arguments run in the clone at each step: exit 0 good, 125 skip, 1-124 or 126-127 bad."))
    test_timeout: Duration = Field(timedelta(minutes=5), description="Longest a single test run may take.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the test.")


class ProfileCpuInputs(ProcessTarget):
    duration: Duration = Field(timedelta(seconds=10), description="How long to sample.")
    rate: int = Field(100, ge=1, le=1000, description="Samples per second.")
    top: int = Field(15, ge=1, le=200, description="How many functions to list in the outputs.")
    subprocesses: bool = Field(False, description="Also profile the target's child processes.")
    idle: bool = Field(False, description="Count idle (waiting) threads too.")
    gil: bool = Field(False, description=(
        "Only samples of the thread holding the GIL: pure-Python CPU work, without threads that py-spy cannot "
        "tell are waiting (a busy interpreter makes lock waiters look active)."))
    nonblocking: bool = Field(False, description="Never pause the target (less accurate, lower overhead).")


class ProfileStacksInputs(ProcessTarget):
    locals: bool = Field(False, description="Include each frame's local variables (may expose data).")
    subprocesses: bool = Field(False, description="Also dump the target's child processes.")
    timeout: Duration = Field(timedelta(seconds=30), description="Give up after this long.")


class ProcessSnapshotInputs(ProcessTarget):
    timeout: Duration = Field(timedelta(minutes=2), description="Give up (and kill gcore) after this long.")


class CoredumpAnalyzeInputs(StepInputs):
    core: str = Field(description="Core file (e.g. steps.snap.outputs.core), or a glob: its newest match.")
    binary: str | None = Field(None, description="The program that dumped it; default: read from the core.")
    max_frames: int = Field(64, ge=1, le=1000, description="Frames kept per thread.")
    timeout: Duration = Field(timedelta(minutes=2), description="Give up (and kill gdb) after this long.")


class MemoryGrowthInputs(ProcessTarget):
    window: Duration = Field(timedelta(seconds=30), description="How long to sample.")
    interval: Duration = Field(timedelta(seconds=1), description="Time between samples.")
    threshold_mb_per_min: float = Field(10.0, gt=0, description="Growth above this (MiB/min) is a leak.")
    include_children: bool = Field(False, description="Add the RSS of the target's child processes.")
    fail_on_leak: bool = Field(False, description="Fail the step when the verdict is `leaking`.")


class LogsSearchInputs(StepInputs):
    paths: list[str] = Field(min_length=1, description="JSON-lines files or globs (*.gz are read as gzip).")
    since: str | None = Field(None, description="A duration back from now (15m) or an ISO 8601 time.")
    until: str | None = Field(None, description="A duration back from now or an ISO 8601 time; default now.")
    level: str | None = Field(None, description="Lowest level kept: debug, info, warning, error, critical.")
    equals: dict[str, Any] = Field(default_factory=dict, description="Field (dotted path) -> value it must equal.")
    contains: dict[str, str] = Field(default_factory=dict, description="Field -> text its value must contain.")
    regex: dict[str, str] = Field(default_factory=dict, description="Field -> regular expression its value matches.")
    text: str | None = Field(None, description="Free text anywhere in the line (case-insensitive).")
    request_id: str | None = Field(None, description="Follow one request: lines whose request id is this.")
    group_by: list[str] = Field(default_factory=list, description="Count matches per value of these fields.")
    top: int = Field(10, ge=1, le=1000, description="Groups kept, largest first.")
    limit: int = Field(50, ge=0, le=10000, description="Matches returned in the outputs, oldest first.")
    time_field: str | None = Field(None, description="Field of the time; default the first of ts, timestamp, time.")
    level_field: str | None = Field(None, description="Field of the level; default level, levelname or severity.")
    fail_if_none: bool = Field(False, description="Fail the step when nothing matches.")


class MetricsQueryInputs(StepInputs):
    url: str = Field(description="Base URL of a Prometheus HTTP API, e.g. http://prometheus:9090.")
    query: str = Field(description="PromQL expression.")
    range: Duration | None = Field(None, description="Query the last RANGE (query_range) instead of an instant.")
    step: Duration = Field(timedelta(seconds=15), description="Resolution of a range query.")
    aggregate: Literal["max", "min", "avg", "last", "sum"] = Field(
        "max", description="How the values become the one `value` compared with the threshold.")
    threshold: float | None = Field(None, description="Compare `value` with this.")
    op: Literal[">", ">=", "<", "<=", "==", "!="] = Field(">", description="A breach is `value OP threshold`.")
    fail_on_breach: bool = Field(False, description="Fail the step on a breach.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (e.g. Authorization).")
    timeout: Duration = Field(timedelta(seconds=30), description="Request timeout.")


class HttpReplayInputs(StepInputs):
    capture: str = Field(description="A JSONL capture (method, path, headers, body, status) or a .har file.")
    base_url: str = Field(description="Where to replay, e.g. a test environment's URL.")
    allow_headers: list[str] = Field(default_factory=list, description="Secret-looking headers to send anyway.")
    compare: list[Literal["status", "body"]] = Field(["status", "body"], description="What to compare.")
    ignore_fields: list[str] = Field(default_factory=list, description="Dotted JSON paths left out of body diffs.")
    match: str | None = Field(None, description="Replay only requests whose `METHOD path` matches this regex.")
    max_requests: int = Field(100, ge=1, le=10000, description="Replay at most this many.")
    timeout: Duration = Field(timedelta(seconds=10), description="Timeout of each request.")
    fail_on_diff: bool = Field(False, description="Fail the step when any replay differs from its capture.")


register_kind("git.bisect", GitBisectInputs, "Find the first bad commit with git bisect run, in a temporary clone.",
              outputs=("first_bad_commit", "steps", "log", "candidates"))
register_kind("profile.cpu", ProfileCpuInputs, "Sample a Python process with py-spy: flamegraph, speedscope, top "
              "functions.", outputs=("pid", "samples", "hottest", "top_own", "top_total", "files"))
register_kind("profile.stacks", ProfileStacksInputs, "Dump every thread's Python stack with py-spy (hung processes).",
              outputs=("pid", "threads"))
register_kind("process.snapshot", ProcessSnapshotInputs, "Write a core file of a live process with gcore.",
              outputs=("pid", "core", "binary", "size_bytes"))
register_kind("coredump.analyze", CoredumpAnalyzeInputs, "Read a core file with gdb: signal and each thread's frames.",
              outputs=("signal", "crashing_frame", "app_frame", "threads", "binary", "files"))
register_kind("memory.growth", MemoryGrowthInputs, "Sample a process's RSS over a window: growth rate and verdict.",
              outputs=("pid", "samples", "start_mb", "end_mb", "growth_mb_per_min", "verdict", "files"))
register_kind("logs.search", LogsSearchInputs, "Search JSON-lines logs: time, level, fields, text, request id, "
              "group counts.", outputs=("matched", "groups", "matches", "searched", "lines_scanned", "bytes_scanned",
                                        "files"))
register_kind("metrics.query", MetricsQueryInputs, "Query a Prometheus HTTP API and compare with a threshold.",
              outputs=("result_type", "series", "value", "verdict"))
register_kind("http.replay", HttpReplayInputs, "Replay captured requests against a base URL and diff the responses.",
              outputs=("replayed", "matched", "differed", "errors", "diffs", "stripped_headers"))
