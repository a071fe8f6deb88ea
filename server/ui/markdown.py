"""Markdown to HTML for the console (the incident report), safely: markdown-it-py's CommonMark with tables,
raw HTML in the source escaped (never passed through), links only to http(s), no images (nothing is fetched)."""

from __future__ import annotations

from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup


def _web_link(url: str) -> bool:
    return url.strip().lower().startswith(("http://", "https://"))


def _link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return str(self.renderToken(tokens, idx, options, env))


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").disable("image")
    md.validateLink = _web_link  # type: ignore[method-assign]  # a link to anything else stays text
    md.add_render_rule("link_open", _link_open)
    return md


_MD = _parser()


def to_html(source: str) -> Markup:
    """The HTML of a Markdown text; every '<' of the source comes out escaped."""
    return Markup(_MD.render(source))  # noqa: S704  (markdown-it escapes the source: html is off)
