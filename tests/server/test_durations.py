from datetime import timedelta

import pytest
from pydantic import BaseModel, ValidationError

from server.durations import Duration, format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400),
                                               ("1h30m", 5400), ("500ms", 0.5), (90, 90), (" 2 h ", 7200)])
def test_parses(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "15x", "m", "-5m", "0s", "1h-", True])
def test_rejects_with_a_message_that_shows_the_form(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_round_trips_through_a_model():
    class M(BaseModel):
        d: Duration

    assert M(d="1h30m").model_dump(mode="json") == {"d": "1h30m"}
    assert format_duration(timedelta(milliseconds=1500)) == "1500ms"
    with pytest.raises(ValidationError, match="write it like 30s"):
        M(d="soon")
