"""`bot submit` payload parsing: k=v values read as JSON when they parse, else strings."""

from __future__ import annotations

import click
import pytest

from bot.cli.jobs import parse_fields


def test_values_are_json_when_they_parse() -> None:
    assert parse_fields(("a=1", "b=2.5", "c=true", "d=[1,2]", "e=x", "f=")) == {
        "a": 1,
        "b": 2.5,
        "c": True,
        "d": [1, 2],
        "e": "x",
        "f": "",
    }


@pytest.mark.parametrize("item", ["novalue", "=1"])
def test_malformed_field_is_a_usage_error(item: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_fields((item,))


def test_bot_pipeline_submit_refuses_a_bad_payload_or_name_before_anything_is_sent() -> None:
    from click.testing import CliRunner

    from bot.cli import main

    bad = CliRunner().invoke(main, ["pipeline", "submit", "difference_of_squares", "a=x"])
    unknown = CliRunner().invoke(main, ["pipeline", "submit", "nope"])

    assert bad.exit_code == 2
    assert "invalid payload for pipeline 'difference_of_squares'" in bad.output
    assert "a: Input should be a valid number" in bad.output
    assert unknown.exit_code == 2 and "unknown pipeline 'nope'" in unknown.output
