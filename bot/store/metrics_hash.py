"""The fields of `bot:metrics:{instance_id}`: written by complete.lua (one HINCRBY per field in
the step that ends a job) and read back by the /metrics collector (bot/observe/metrics.py).

Op labels are bounded: only ops registered in this process (`bot.ops.REGISTRY`) become an `op`
label or a hash field; any other name a sender chose counts as `op="unknown"`.
"""

from __future__ import annotations

import bisect

from bot.ops import REGISTRY

#: Upper bounds (seconds) of the job duration histogram's buckets; +Inf is implied.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
SEP = "|"
#: The `op` label of every op name that is not registered here.
UNKNOWN_OP = "unknown"


def duration_bucket(seconds: float) -> str:
    """The label of the smallest bucket holding `seconds` ("+Inf" past the last)."""
    index = bisect.bisect_left(DURATION_BUCKETS_S, seconds)
    return "+Inf" if index == len(DURATION_BUCKETS_S) else repr(float(DURATION_BUCKETS_S[index]))


def metric_op(name: str) -> str:
    """The `op` label for an op name: the name of a registered op, else "unknown".

    The name comes from the message (any `ops.*` task name a sender chose), so an unknown one
    must not become a label or a hash field of its own: that would grow Redis and every
    scrape without bound."""
    return name if name in REGISTRY else UNKNOWN_OP


def outcome_fields(op: str, status: str, duration_s: float) -> list[str]:
    """The metrics-hash fields the complete script increments by one for an ended attempt."""
    label = metric_op(op)
    return [
        SEP.join(("jobs", label, status)),
        SEP.join(("duration", label, duration_bucket(duration_s))),
    ]


def duration_sum_field(op: str) -> str:
    """The metrics-hash field the complete script adds each attempt's milliseconds to."""
    return SEP.join(("duration_ms_sum", metric_op(op), "total"))
