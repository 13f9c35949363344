"""Arithmetic ops: `sum` and `subtract` of two numbers."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from bot.ops import op


def _integral_as_int(value: float) -> int | float:
    return int(value) if value.is_integer() else value


#: A finite number; integral values stay ints, so 1 + 2 is 3, not 3.0.
Number = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_integral_as_int)]


@op("sum")
def add(a: Number, b: Number) -> int | float:
    """a + b."""
    return a + b


@op("subtract")
def subtract(a: Number, b: Number) -> int | float:
    """a - b."""
    return a - b
