"""JobRecord.from_hash: the one parser of the job hash (full reads, partial reads, bad values)."""

from __future__ import annotations

from bot.jobs.record import JobRecord


def test_a_full_hash_parses_into_typed_fields() -> None:
    record = JobRecord.from_hash(
        "j1",
        {
            "state": "succeeded",
            "op": "sum",
            "queue": "celery",
            "owner": "inst-1",
            "pid": "42",
            "fence": "3",
            "attempts": "2",
            "recoveries": "1",
            "delivery_tag": "tag-1",
            "message": '{"task": "ops.sum", "kwargs": {"a": 1}}',
            "progress": '{"current": 1, "total": 2}',
            "outcome": '{"result": 3}',
            "enqueued_at": "1000",
            "started_at": "2000",
            "finished_at": "3000",
        },
    )
    assert (record.state, record.op, record.owner, record.pid) == ("succeeded", "sum", "inst-1", 42)
    assert (record.fence, record.attempts, record.recoveries) == (3, 2, 1)
    assert record.message == {"task": "ops.sum", "kwargs": {"a": 1}}
    assert record.progress == {"current": 1, "total": 2}
    assert record.outcome == {"result": 3}
    assert (record.enqueued_at_ms, record.started_at_ms, record.finished_at_ms) == (
        1000,
        2000,
        3000,
    )
    assert record.final


def test_a_partial_or_empty_read_gives_defaults() -> None:
    record = JobRecord.from_hash("j2", {"fence": None, "started_at": "5"})
    assert (record.state, record.fence, record.started_at_ms, record.pid) == ("", 0, 5, None)
    assert record.message == {} and record.outcome == {} and record.progress is None
    assert not record.final


def test_values_that_do_not_parse_read_as_missing() -> None:
    record = JobRecord.from_hash(
        "j3",
        {"fence": "x", "pid": "", "message": "not json", "outcome": "[1]", "started_at": "1e3"},
    )
    assert (record.fence, record.pid, record.started_at_ms) == (0, None, None)
    assert record.message == {} and record.outcome == {}
