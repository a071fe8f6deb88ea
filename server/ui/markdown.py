"""Markdown to HTML for the console (the incident report), safely: markdown-it-py's CommonMark with tables,
raw HTML in the source escaped (never passed through), links only to http(s), no images (nothing is fetched).
Table cells carry their column's heading as data-label, so on a phone a table stacks into labelled cells like
the console's own tables (console.css) instead of squeezing five columns into 390 px."""

from __future__ import annotations

from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup


def _web_link(url: str) -> bool:
    return url.strip().lower().startswith(("http://", "https://"))


def _link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return str(self.renderToken(tokens, idx, options, env))


def _text(inline: Any) -> str:
    return "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))


def _cell_labels(state: Any) -> None:
    """data-label="<its column's heading>" on every body cell of every table (the renderer escapes it)."""
    headings: list[str] = []
    column = 0
    tokens = state.tokens
    for i, token in enumerate(tokens):
        if token.type == "thead_open":
            headings = []
        elif token.type == "th_open":
            headings.append(_text(tokens[i + 1]).strip())
        elif token.type == "tr_open":
            column = 0
        elif token.type == "td_open":
            if column < len(headings) and headings[column]:
                token.attrSet("data-label", headings[column])
            column += 1


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").disable("image")
    md.validateLink = _web_link  # type: ignore[method-assign]  # a link to anything else stays text
    md.add_render_rule("link_open", _link_open)
    md.core.ruler.push("cell_labels", _cell_labels)
    return md


_MD = _parser()


def to_html(source: str) -> Markup:
    """The HTML of a Markdown text; every '<' of the source comes out escaped."""
    return Markup(_MD.render(source))  # noqa: S704  (markdown-it escapes the source: html is off)
