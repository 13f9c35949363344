"""Logs never carry secrets; JSON lines carry job context."""

from __future__ import annotations

import json
import logging

from config.logging_setup import ContextFilter, JsonFormatter, scrub


def test_passwords_and_tokens_are_scrubbed() -> None:
    assert (
        scrub("connect redis://u:hunter2@h:6379/0 failed")
        == "connect redis://u:***@h:6379/0 failed"
    )
    assert scrub("Authorization: Bearer abc.def-123") == "Authorization: Bearer ***"
    assert scrub("redis://h:6379/0") == "redis://h:6379/0"
    assert scrub("token: BEARER xyz and bearer abc") == "token: BEARER *** and bearer ***"
    assert scrub("Task ops.sum[1] succeeded in 0.01s: 3") == "Task ops.sum[1] succeeded in 0.01s: 3"


def test_json_lines_carry_context_fields() -> None:
    record = logging.LogRecord("bot.x", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    record.job_id, record.op = "j1", "sum"
    ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job j1 done"
    assert line["job_id"] == "j1" and line["op"] == "sum"
    assert line["level"] == "INFO"
