"""The example pipeline `difference_of_squares` and its two ops, `scale` and `product`.

(a*k)^2 - (b*k)^2 computed as (a + b)*(a - b) of the scaled operands: `scale` passes `{a, b}` on,
`sum` and `subtract` run in parallel on it, and `product` multiplies their `results`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from bot.ops import op
from bot.pipelines import parallel, pipeline
from tasks.arithmetic import Number


class Operands(BaseModel):
    """Two numbers, as `sum` and `subtract` take them."""

    a: Number
    b: Number


@op("scale")
def scale(a: Number, b: Number, factor: Number = 1) -> Operands:
    """a*factor and b*factor, as {a, b}."""
    return Operands(a=a * factor, b=b * factor)


@op("product")
def product(results: list[Number]) -> int | float:
    """The product of `results` (1 for none): the last stage after a parallel one."""
    return math.prod(results)


pipeline(
    "difference_of_squares",
    "scale",
    parallel("sum", "subtract"),
    "product",
    description="(a*k)^2 - (b*k)^2 as (a + b)(a - b): scale, then sum and subtract, then product.",
)
