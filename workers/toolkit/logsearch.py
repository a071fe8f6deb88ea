"""Search JSON-lines logs at grep-like speed: byte checks over 4 MiB blocks pick candidate lines, orjson parses
only those, and each candidate is checked exactly (why and how fast: docs/architecture.md, "Measurements")."""

from __future__ import annotations

import functools
import gzip
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson

from server import saferegex
from server.durations import parse_duration

BLOCK = 4 * 1024 * 1024
TIME_FIELDS = ("ts", "timestamp", "time", "@timestamp", "asctime")
LEVEL_FIELDS = ("level", "levelname", "severity", "lvl")
REQUEST_ID_FIELDS = ("request_id", "requestId", "req_id", "trace_id")
LEVELS = {"trace": 5, "debug": 10, "info": 20, "notice": 25, "warn": 30, "warning": 30, "error": 40, "err": 40,
          "critical": 50, "crit": 50, "fatal": 50, "alert": 55, "emerg": 60, "emergency": 60, "panic": 60}
_UTC_SUFFIXES = (b"Z", b"+00:00", b"+0000", b"z")
_MISSING = object()


def parse_when(text: str, now: datetime) -> datetime:
    """`15m` (that long before now) or an ISO 8601 time; a time without offset is UTC."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (15m) nor an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def level_number(value: Any) -> int | None:
    if isinstance(value, str):
        return LEVELS.get(value.strip().lower())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)  # numeric levels (pino/bunyan: 30 info, 50 error) compare as they are
    return None


def lookup(record: dict[str, Any], path: str) -> Any:
    """A dotted path into a record; a key that itself contains dots (`http.status`) wins over nesting."""
    if path in record:
        return record[path]
    current: Any = record
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


def as_time(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("z", "Z").replace(",", "."))
        except ValueError:
            return None
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)  # epoch ms or s
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@dataclass(eq=False)  # hashed by identity: level_pattern caches per query
class Query:
    since: datetime | None = None
    until: datetime | None = None
    level: str | None = None
    equals: dict[str, Any] = field(default_factory=dict)
    contains: dict[str, str] = field(default_factory=dict)
    regex: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    request_id: str | None = None
    group_by: list[str] = field(default_factory=list)
    top: int = 10
    limit: int = 50
    time_field: str | None = None
    level_field: str | None = None
    min_level: int | None = field(init=False, default=None)
    patterns: dict[str, Any] = field(init=False, default_factory=dict)
    text_lower: bytes | None = field(init=False, default=None)
    since_key: bytes | None = field(init=False, default=None)
    until_key: bytes | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.level is not None:
            self.min_level = level_number(self.level)
            if self.min_level is None:
                raise ValueError(f"unknown level {self.level!r}: use one of {', '.join(LEVELS)}")
        self.patterns = {name: saferegex.compile(expr) for name, expr in self.regex.items()}
        self.text_lower = self.text.lower().encode() if self.text else None
        # ISO timestamps of one fixed width compare as text; only UTC ones, and only to the second.
        self.since_key = self.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S").encode() if self.since else None
        self.until_key = self.until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S").encode() if self.until else None

    def needles(self) -> tuple[list[bytes], bool]:
        """Byte strings of which every matching line holds at least one, and whether case is ignored. Only text
        that every JSON encoder writes the same way qualifies (ASCII, nothing to escape)."""
        if self.request_id and _verbatim(self.request_id):
            return [self.request_id.encode()], False
        for value in self.equals.values():
            if isinstance(value, str) and _verbatim(value):
                return [b'"' + value.encode() + b'"'], False
        for value in self.contains.values():
            if _verbatim(value):
                return [value.encode()], False
        if self.text and _verbatim(self.text):
            return [self.text.encode()], True
        return [], False

    @functools.lru_cache(maxsize=8)  # noqa: B019 (a handful of level keys per query, for the query's lifetime)
    def level_pattern(self, level_key: bytes) -> re.Pattern[bytes] | None:
        """`"level": "ERROR"` and every other spelling at or above the wanted level, after the file's level key."""
        if self.min_level is None or self.min_level <= LEVELS["trace"]:
            return None
        names = sorted({v for name, n in LEVELS.items() if n >= self.min_level
                        for v in (name, name.upper(), name.title())}, key=lambda v: (-len(v), v))
        return re.compile(re.escape(level_key) + rb'\s*:\s*"(?:' + b"|".join(n.encode() for n in names) + rb')"')

    def matches(self, record: dict[str, Any], line: bytes, when: datetime | None) -> bool:
        if (self.since or self.until) and when is None:
            return False
        if self.since and when is not None and when < self.since:
            return False
        if self.until and when is not None and when > self.until:
            return False
        if self.min_level is not None:
            level = _first(record, [self.level_field] if self.level_field else LEVEL_FIELDS)
            number = level_number(level)
            if number is None or number < self.min_level:
                return False
        if self.request_id is not None and not any(
                _text(record.get(f)) == self.request_id for f in REQUEST_ID_FIELDS if f in record):
            return False
        for name, wanted in self.equals.items():
            got = lookup(record, name)
            if got is _MISSING or (got != wanted and _text(got) != _text(wanted)):
                return False
        for name, part in self.contains.items():
            got = lookup(record, name)
            if got is _MISSING or part not in _text(got):
                return False
        for name, pattern in self.patterns.items():
            got = lookup(record, name)
            if got is _MISSING or not pattern.search(_text(got)):
                return False
        return not (self.text_lower is not None and self.text_lower not in line.lower())


def _verbatim(text: str) -> bool:
    return bool(text) and text.isascii() and not any(c in text for c in '"\\/') and text.isprintable()


def _first(record: dict[str, Any], names: list[str] | tuple[str, ...]) -> Any:
    for name in names:
        value = lookup(record, name)
        if value is not _MISSING:
            return value
    return None


@dataclass
class Result:
    files: list[str] = field(default_factory=list)
    matched: int = 0
    lines_scanned: int = 0
    bytes_scanned: int = 0
    unparsed: int = 0
    groups: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    matches: list[tuple[datetime | None, str, dict[str, Any]]] = field(default_factory=list)


def _open(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    return cast(IO[bytes], gzip.open(path, "rb")) if magic == b"\x1f\x8b" else path.open("rb")


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """Blocks that end on a line boundary."""
    rest = b""
    while True:
        data = stream.read(BLOCK)
        if not data:
            if rest:
                yield rest
            return
        data = rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1:]
        yield data[:cut + 1]


def _lines_with(block: bytes, needles: list[bytes], ignore_case: bool) -> Iterator[bytes]:
    """The lines holding any of the needles, found with bytes.find (C speed) rather than line by line."""
    hay = block.lower() if ignore_case else block
    starts: set[int] = set()
    for needle in needles:
        needle = needle.lower() if ignore_case else needle
        pos = hay.find(needle)
        while pos >= 0:
            starts.add(pos)
            end = hay.find(b"\n", pos)
            if end < 0:
                break
            pos = hay.find(needle, end)
    return _lines_at(block, sorted(starts))


def _lines_at(block: bytes, positions: Iterable[int]) -> Iterator[bytes]:
    """Each line holding one of the (ascending) positions, once."""
    line_end = -1
    for pos in positions:
        if pos <= line_end:
            continue
        start = block.rfind(b"\n", 0, pos) + 1
        line_end = block.find(b"\n", pos)
        if line_end < 0:
            yield block[start:]
            return
        yield block[start:line_end]


@dataclass
class _Layout:
    """What a file's first records say about all of them: which fields hold the time and the level."""

    time_name: str | None = None
    level_name: str | None = None
    levels_are_names: bool = False
    stamps: re.Pattern[bytes] | None = None  # the UTC time of each line, to the second
    level_key: bytes = b""


class Searcher:
    """One query over many files; call search_file for each, then summary()."""

    def __init__(self, query: Query, overflow: IO[bytes] | None = None) -> None:
        self.query = query
        self.result = Result()
        self.overflow = overflow
        self._kept_in_file = 0
        self._time_names = [query.time_field] if query.time_field else list(TIME_FIELDS)
        self._level_names = [query.level_field] if query.level_field else list(LEVEL_FIELDS)

    def search_file(self, path: Path, check: Callable[[], None] = lambda: None) -> None:
        q, result = self.query, self.result
        result.files.append(str(path))
        self._kept_in_file = 0
        layout: _Layout | None = None
        with _open(path) as stream:
            for block in _blocks(stream):
                check()
                if layout is None:
                    layout = self._learn(block)
                lines = block.count(b"\n") + (not block.endswith(b"\n"))
                result.bytes_scanned += len(block)
                result.lines_scanned += lines
                if self._block_outside(block, lines, layout):
                    continue
                for line in self._candidates(block, lines, layout):
                    if not line.strip():
                        continue
                    if layout.time_name is not None and self._outside(line, layout.time_name):
                        continue
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        result.unparsed += 1
                        continue
                    if not isinstance(record, dict):
                        result.unparsed += 1
                        continue
                    when = as_time(_first(record, self._time_names))
                    if q.matches(record, line, when):
                        self._keep(path, line, record, when)

    def _learn(self, block: bytes) -> _Layout:
        for line in block.split(b"\n", 20)[:20]:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            layout = _Layout(time_name=next((n for n in self._time_names if n in record), None),
                             level_name=next((n for n in self._level_names if n in record), None))
            if layout.time_name and (self.query.since_key or self.query.until_key):
                layout.stamps = re.compile(b'"' + re.escape(layout.time_name.encode()) +
                                           rb'"\s*:\s*"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(?:Z|\+00:?00)"')
            if layout.level_name:
                layout.levels_are_names = isinstance(record[layout.level_name], str)
                layout.level_key = b'"' + layout.level_name.encode() + b'"'
            return layout
        return _Layout()

    def _block_outside(self, block: bytes, lines: int, layout: _Layout) -> bool:
        """True when every line of the block has a UTC time and all of them are out of the window: in
        time-ordered logs most blocks of a `since: 15m` search go after one regex pass, none of them parsed."""
        if layout.stamps is None:
            return False
        stamps = layout.stamps.findall(block)
        if len(stamps) != lines:  # a line without (or with two) such times: decide line by line
            return False
        q = self.query
        return bool((q.since_key and max(stamps) < q.since_key) or (q.until_key and min(stamps) > q.until_key))

    def _candidates(self, block: bytes, lines: int, layout: _Layout) -> Iterator[bytes]:
        q = self.query
        needles, ignore_case = q.needles()
        if needles:
            return _lines_with(block, needles, ignore_case)
        pattern = q.level_pattern(layout.level_key) if layout.levels_are_names else None
        # The level pattern may only skip lines when each line has exactly one level field to look at.
        if pattern is not None and block.count(layout.level_key) == lines:
            return _lines_at(block, (m.start() for m in pattern.finditer(block)))
        return iter(block.split(b"\n"))

    def _outside(self, line: bytes, time_name: str) -> bool:
        """True only when the raw UTC timestamp is surely out of the window (to the second)."""
        q = self.query
        if q.since_key is None and q.until_key is None:
            return False
        key = b'"' + time_name.encode() + b'"'
        at = line.find(key)
        if at < 0:
            return False
        start = line.find(b'"', at + len(key), at + len(key) + 4)
        if start < 0:
            return False
        end = line.find(b'"', start + 1, start + 40)
        raw = line[start + 1:end]
        if end < 0 or not raw.endswith(_UTC_SUFFIXES) or raw[10:11] != b"T":
            return False
        second = raw[:19]
        return bool((q.since_key and second < q.since_key) or (q.until_key and second > q.until_key))

    def _keep(self, path: Path, line: bytes, record: dict[str, Any], when: datetime | None) -> None:
        q, result = self.query, self.result
        result.matched += 1
        if q.group_by:
            result.groups[tuple(_group_value(lookup(record, f)) for f in q.group_by)] += 1
        if self._kept_in_file < q.limit:  # per file: the oldest `limit` overall are among them
            self._kept_in_file += 1
            result.matches.append((when, str(path), record))
        if self.overflow is not None:
            self.overflow.write(line.rstrip(b"\r") + b"\n")

    def summary(self) -> dict[str, Any]:
        q, result = self.query, self.result
        # Oldest first across files, so following one request id reads as its story.
        ordered = sorted(result.matches, key=lambda m: (m[0] is None, m[0] or datetime.min.replace(tzinfo=UTC)))
        groups = [{**dict(zip(q.group_by, key, strict=True)), "count": n}
                  for key, n in result.groups.most_common(q.top)]
        return {"matched": result.matched, "groups": groups, "group_count": len(result.groups),
                "matches": [{**record, "_file": path} for _when, path, record in ordered[:q.limit]],
                "truncated": result.matched > len(ordered[:q.limit]), "searched": result.files,
                "lines_scanned": result.lines_scanned, "bytes_scanned": result.bytes_scanned,
                "unparsed_lines": result.unparsed}


def _group_value(value: Any) -> Any:
    if value is _MISSING:
        return None
    return value if isinstance(value, str | int | float | bool) or value is None else _text(value)
