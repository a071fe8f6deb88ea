"""The CLI's Rich consoles, with markup off.

What the CLI prints is mostly text it did not write: server messages, runbook and incident titles,
errors, user input. Those often hold brackets (`[sev2, open]`, `params.hosts[0]`, a `[/]` in a shell
error) that Rich's markup would take for tags, silently dropping the text or raising MarkupError. So
markup is off on every console, tables included, and colour goes through Text: `styled()` below, or
a Text built where it is printed.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.text import Text


def terminal_width() -> int | None:
    """The width of the user's terminal, even when this output is piped (`runbookd flags list | less`):
    COLUMNS first, then any of stdout, stderr, stdin that is a terminal; None leaves Rich its default."""
    if os.environ.get("COLUMNS", "").isdigit():
        return None  # Rich reads it itself
    for fd in (1, 2, 0):
        try:
            return os.get_terminal_size(fd).columns
        except OSError:
            continue
    return None


def make_console(*, stderr: bool = False, highlight: bool = True) -> Console:
    return Console(stderr=stderr, soft_wrap=True, markup=False, highlight=highlight, width=terminal_width())


def when(value: Any) -> str:
    """A time as people read it, always with its zone: `2026-12-02 00:52:51 UTC`; `-` for none."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain strings and (text, style) pairs: styled("run 3 ", ("failed", "red"))."""
    return Text.assemble(*parts)


def print_error(console: Console, message: object) -> None:
    console.print(styled(("error:", "red"), f" {message}"))
