"""Batch delivery (BOT_REPORT_BATCH): the body of a batch request, and what a sink's 2xx answer
to it says, without any HTTP library (README "Batch delivery" is the sink's side of this).

The request is one POST whose body is a JSON array of reports, each the very JSON object a
single delivery sends; each report's `job_id` is its idempotency key (the batch request has no
Idempotency-Key header: a key belongs to one report).

A non-2xx answer is about the batch as a whole, as for one report (bot/outbox/sinks.py `judge`).
A 2xx answer accepts the whole batch, unless its body is a JSON object naming what it took:

- `{"accepted": ["job-1", "job-3"]}`: only those reports are accepted (acked); every other
  report of the batch is retried later with backoff, and counts one delivery towards
  BOT_OUTBOX_MAX_DELIVERIES, like a failed attempt;
- `"rejected": {"job-2": "reason"}` (or a list of job ids), with or without `accepted`: those
  reports are refused for good and dead-lettered at once with the reason.

A 2xx body that is empty, or not JSON at all (`ok`), or a JSON object with neither key accepts
the whole batch. A body that starts like JSON (`{`, `[`) but does not parse (cut off at the
answer size limit, say), or whose `accepted` / `rejected` is not of the shape above, is a failed
attempt for the whole batch: acking what the sink may not have taken would lose reports.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bot.jobs.envelope import printable
from bot.outbox.delivery import BatchAnswer, DeliveryFailed

#: The reason recorded for a report a batch answer rejected without saying why.
REJECTED_WITHOUT_REASON = "rejected in the sink's batch answer"
#: A dead-letter reason quotes at most this much of what the sink said about one report.
REASON_CHARS = 200


def encode_batch(reports: Sequence[str]) -> bytes:
    """The JSON array of the reports (each already a JSON object, joined as it is)."""
    return ("[" + ",".join(reports) + "]").encode("utf-8")


def read_answer(body: bytes) -> BatchAnswer:
    """What a 2xx answer's body says was taken; `DeliveryFailed` when it cannot be read."""
    text = body.strip()
    if not text:
        return BatchAnswer()
    try:
        data = json.loads(text)
    except ValueError:
        if text[:1] in (b"{", b"["):
            raise DeliveryFailed(
                f"a 2xx batch answer of {len(body)} bytes that is not valid JSON"
            ) from None
        return BatchAnswer()  # plain text such as "ok": the whole batch
    if not isinstance(data, dict) or not ({"accepted", "rejected"} & data.keys()):
        return BatchAnswer()
    return BatchAnswer(_accepted(data.get("accepted")), _rejected(data.get("rejected")))


def _accepted(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise DeliveryFailed("a batch answer whose 'accepted' is not a list of job ids")
    return frozenset(value)


def _rejected(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(key, str) for key in value):
        return dict.fromkeys(value, REJECTED_WITHOUT_REASON)
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _reason(reason) for key, reason in value.items()}
    raise DeliveryFailed("a batch answer whose 'rejected' is neither a list nor an object")


def _reason(reason: Any) -> str:
    text = reason if isinstance(reason, str) else json.dumps(reason)
    quoted = printable(text, REASON_CHARS)
    return f"{REJECTED_WITHOUT_REASON}: {quoted}" if quoted else REJECTED_WITHOUT_REASON
