"""The CLI's Rich consoles, with markup off.

What the CLI prints is mostly text it did not write: server messages, runbook and incident titles,
errors, user input. Those often hold brackets (`[sev2, open]`, `params.hosts[0]`, a `[/]` in a shell
error) that Rich's markup would take for tags, silently dropping the text or raising MarkupError. So
markup is off on every console, tables included, and colour goes through Text: `styled()` below, or
a Text built where it is printed.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def make_console(*, stderr: bool = False, highlight: bool = True) -> Console:
    return Console(stderr=stderr, soft_wrap=True, markup=False, highlight=highlight)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain strings and (text, style) pairs: styled("run 3 ", ("failed", "red"))."""
    return Text.assemble(*parts)


def print_error(console: Console, message: object) -> None:
    console.print(styled(("error:", "red"), f" {message}"))
