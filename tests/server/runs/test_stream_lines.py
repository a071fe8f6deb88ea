"""Where the SSE stream puts a published batch's output lines (server.runs.stream._place_lines)."""

from __future__ import annotations

from server.runs.stream import _place_lines


def _event(event_id: int, kind: str, step: str | None = None) -> dict:
    return {"id": event_id, "type": kind, "step_id": step}


def _line(step: str, text: str) -> dict:
    return {"id": None, "type": "step.output", "step_id": step, "data": {"line": text}}


def test_a_line_waits_for_the_unsent_event_it_follows():
    batch = [_event(11, "step.started", "a"), _line("a", "x"), _event(12, "step.finished", "a"), _line("b", "y")]
    waiting: dict[int, list[dict]] = {}
    now, fresh = _place_lines(batch, 10, waiting)
    assert now == [] and fresh
    assert waiting == {11: [_line("a", "x")], 12: [_line("b", "y")]}


def test_a_line_after_events_already_sent_goes_at_once():
    waiting: dict[int, list[dict]] = {}
    assert _place_lines([_line("a", "x")], 12, waiting) == ([_line("a", "x")], False)
    # A batch whose events the history already gave: its lines can only go now.
    assert _place_lines([_event(11, "step.started", "a"), _line("a", "y")], 12, waiting) == ([_line("a", "y")], False)
    assert waiting == {}
