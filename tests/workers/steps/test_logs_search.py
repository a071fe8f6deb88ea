"""logs.search over real files (plain and gzip), checked against a line-by-line reference search."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from server.runbooks.toolkit_kinds import LogsSearchInputs
from tests.workers.steps.toolkit_support import make_ctx
from workers.steps.base import StepFailed
from workers.steps.logs_search import LogsSearch
from workers.toolkit.logsearch import LEVELS

NOW = datetime.now(UTC)
REGIONS = ["eu-west", "us-east", "ap-south"]
ERRORS = ["TimeoutError", "KeyError", "DatabaseLocked"]


def make_records(count: int, seed: int, start: datetime, span: timedelta) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(count):
        when = start + span * i / count
        level = rng.choice(["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"])
        record = {"timestamp": when.isoformat(timespec="milliseconds"), "level": level, "logger": "app.http",
                  "message": f"GET /orders/{rng.randint(1, 50)} took {rng.randint(1, 900)} ms",
                  "request_id": f"req-{seed}-{i % 97}", "region": rng.choice(REGIONS),
                  "http": {"status": 500 if level == "ERROR" else 200}}
        if level == "ERROR":
            record["error"] = rng.choice(ERRORS)
        records.append(record)
    return records


def write(path: Path, records: list[dict], *, compact: bool = False) -> Path:
    text = "".join((json.dumps(r, separators=(",", ":")) if compact else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Two hours of an app's logs, rotated: the older hour gzipped, the newer plain with a garbage line."""
    where = tmp_path_factory.mktemp("logs")
    older = make_records(3000, 1, NOW - timedelta(hours=2), timedelta(hours=1))
    newer = make_records(3000, 2, NOW - timedelta(hours=1), timedelta(hours=1) - timedelta(seconds=5))
    # One request that spans both files (a retried call), to follow across them.
    older[-1].update(request_id="req-follow", level="ERROR", error="TimeoutError")
    newer[0].update(request_id="req-follow", level="INFO")
    write(where / "app.log.1.gz", older)
    path = write(where / "app.log", newer, compact=True)
    with path.open("a") as f:
        f.write("not json at all\n")
    return where, older + newer


def reference(records: list[dict], **query) -> list[dict]:
    """The obvious, slow search that the fast one must agree with."""
    out = []
    for r in records:
        when = datetime.fromisoformat(r["timestamp"])
        if "since" in query and when < query["since"]:
            continue
        if "level" in query and LEVELS[r["level"].lower()] < LEVELS[query["level"]]:
            continue
        if "region" in query and r["region"] != query["region"]:
            continue
        if "text" in query and query["text"].lower() not in json.dumps(r).lower():
            continue
        out.append(r)
    return out


def search(where: Path, tmp_path: Path, **inputs) -> dict:
    return LogsSearch().run(LogsSearchInputs(paths=[str(where / "app.log*")], **inputs), make_ctx(tmp_path))


def test_since_and_level_with_groups_agree_with_the_reference(logs, tmp_path):
    where, records = logs
    # Absolute bounds: the logs were written relative to NOW, and a relative `15m` would move with the clock.
    since = (NOW - timedelta(minutes=15)).isoformat()
    outputs = search(where, tmp_path, since=since, level="error", group_by=["error"], top=5)
    expected = reference(records, since=NOW - timedelta(minutes=15), level="error")
    assert outputs["matched"] == len(expected) > 10
    counts = {}
    for r in expected:
        counts[r["error"]] = counts.get(r["error"], 0) + 1
    assert {g["error"]: g["count"] for g in outputs["groups"]} == counts
    assert outputs["groups"][0]["count"] == max(counts.values())
    # Each error group is a finding, the biggest first, pointing at the matches.
    assert [f["message"] for f in outputs["findings"]] == [
        f"{g['count']} x error={g['error']}" for g in outputs["groups"][:5]]
    assert {f["severity"] for f in outputs["findings"]} == {"warning"}
    assert outputs["lines_scanned"] == 6001
    assert len(outputs["searched"]) == 2


def test_field_equals_and_group_by_two_fields(logs, tmp_path):
    where, records = logs
    outputs = search(where, tmp_path, equals={"region": "eu-west"}, level="warning",
                     group_by=["region", "http.status"], top=10)
    expected = reference(records, region="eu-west", level="warning")
    assert outputs["matched"] == len(expected)
    assert {(g["region"], g["http.status"]) for g in outputs["groups"]} == {("eu-west", 200), ("eu-west", 500)}
    assert sum(g["count"] for g in outputs["groups"]) == len(expected)


def test_free_text_is_case_insensitive_and_counts_the_unparsed(logs, tmp_path):
    where, records = logs
    outputs = search(where, tmp_path, text="ORDERS/17 took")
    assert outputs["matched"] == len(reference(records, text="orders/17 took")) > 0
    outputs = search(where, tmp_path, text="at all")
    assert outputs["matched"] == 0 and outputs["unparsed_lines"] == 1


def test_following_a_request_across_files_reads_oldest_first(logs, tmp_path):
    where, _records = logs
    outputs = search(where, tmp_path, request_id="req-follow")
    assert outputs["matched"] == 2
    first, second = outputs["matches"]
    assert (first["level"], second["level"]) == ("ERROR", "INFO")
    assert first["_file"].endswith("app.log.1.gz") and second["_file"].endswith("app.log")


def test_contains_regex_and_until(logs, tmp_path):
    where, records = logs
    outputs = search(where, tmp_path, contains={"message": "/orders/4"}, regex={"region": "^(eu|us)-"},
                     until=(NOW - timedelta(minutes=90)).isoformat(), limit=5)
    cutoff = NOW - timedelta(minutes=90)
    expected = [r for r in records if "/orders/4" in r["message"] and r["region"] != "ap-south"
                and datetime.fromisoformat(r["timestamp"]) <= cutoff]
    assert outputs["matched"] == len(expected)
    assert len(outputs["matches"]) == 5 and outputs["truncated"]
    matches_file = Path(outputs["files"]["matches"]["path"])
    assert len(matches_file.read_text().splitlines()) == len(expected)


def test_relative_times_count_back_from_now(tmp_path):
    now = datetime.now(UTC)
    write(tmp_path / "app.log", [{"ts": (now - timedelta(minutes=m)).isoformat(), "level": "info", "n": m}
                                 for m in (120, 30, 10, 1)])
    outputs = LogsSearch().run(LogsSearchInputs(paths=[str(tmp_path / "app.log")], since="15m", until="5m"),
                               make_ctx(tmp_path))
    assert [m["n"] for m in outputs["matches"]] == [10]


def test_numeric_levels_and_local_time_offsets(tmp_path):
    """pino-style numeric levels and +02:00 timestamps take the slow paths, and still match exactly."""
    plus2 = timezone(timedelta(hours=2))
    now = datetime.now(UTC)  # not NOW: `since: 15m` counts back from the clock, and the suite may run for long
    lines = [{"time": (now - timedelta(minutes=m)).astimezone(plus2).isoformat(), "level": lvl, "msg": "x"}
             for m, lvl in [(30, 50), (10, 50), (5, 30), (1, 60)]]
    write(tmp_path / "pino.log", lines)
    outputs = LogsSearch().run(LogsSearchInputs(paths=[str(tmp_path / "pino.log")], since="15m", level="error"),
                               make_ctx(tmp_path))
    assert outputs["matched"] == 2
    assert [m["level"] for m in outputs["matches"]] == [50, 60]


def test_absolute_times_and_errors(logs, tmp_path):
    where, _records = logs
    since = (NOW - timedelta(minutes=20)).isoformat()
    outputs = search(where, tmp_path, since=since, level="critical")
    assert outputs["matched"] == 0
    with pytest.raises(StepFailed, match="no log line matches"):
        search(where, tmp_path, since=since, level="critical", fail_if_none=True)
    with pytest.raises(StepFailed, match="neither a duration"):
        search(where, tmp_path, since="yesterday-ish")
    with pytest.raises(StepFailed, match="unknown level"):
        search(where, tmp_path, level="loud")
    with pytest.raises(StepFailed, match="no log file matches"):
        LogsSearch().run(LogsSearchInputs(paths=[str(tmp_path / "none*.log")]), make_ctx(tmp_path))
