"""Safe YAML loading that remembers where each value was written, and refuses alias bombs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

MAX_BYTES = 256 * 1024
MAX_DEPTH = 50
MAX_NODES = 20_000  # counted with aliases expanded: a "billion laughs" document stops here

Path = tuple[str | int, ...]


@dataclass
class YamlProblem(Exception):
    message: str
    line: int = 1
    column: int = 1


def _walk(node: yaml.Node, path: Path, positions: dict[Path, tuple[int, int]], budget: list[int],
          depth: int) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise YamlProblem(f"the document expands to more than {MAX_NODES} values: anchors and aliases (&x, *x) "
                          "nested like a 'billion laughs' bomb are refused; write the values out",
                          node.start_mark.line + 1, node.start_mark.column + 1)
    if depth > MAX_DEPTH:
        raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep (a recursive alias?)",
                          node.start_mark.line + 1, node.start_mark.column + 1)
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            # A key's own position is where a "remove this key" message should point.
            positions.setdefault((*path, key, "<key>"), (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            _walk(value_node, (*path, key), positions, budget, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), positions, budget, depth + 1)


def _check_depth(text: str) -> None:
    """Refuse deep nesting from the event stream, which PyYAML produces without recursing."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
                raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep; a runbook needs far fewer", line, column)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load(text: str) -> tuple[Any, dict[Path, tuple[int, int]]]:
    """Parse one YAML document with the safe loader; positions map value paths to (line, column), 1-based."""
    if len(text.encode()) > MAX_BYTES:
        raise YamlProblem(f"file is larger than {MAX_BYTES // 1024} KiB; a runbook should be much smaller")
    try:
        _check_depth(text)  # before compose, which recurses once per level: 3,000 levels were a RecursionError
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlProblem(f"invalid YAML: {exc.problem or exc.context}", *where) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {exc}") from None
    if node is None:
        raise YamlProblem("the file is empty; a runbook needs at least title and steps")
    positions: dict[Path, tuple[int, int]] = {}
    _walk(node, (), positions, [MAX_NODES], 0)
    try:
        loader = yaml.SafeLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {exc}") from None
    return data, positions


def position(positions: dict[Path, tuple[int, int]], path: Path, *, key: bool = False) -> tuple[int, int]:
    """The position of path, or of its nearest ancestor that was written in the file."""
    if key and (*path, "<key>") in positions:
        return positions[(*path, "<key>")]
    while path:
        if path in positions:
            return positions[path]
        path = path[:-1]
    return positions.get((), (1, 1))
