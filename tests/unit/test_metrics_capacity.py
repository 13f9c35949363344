"""The metrics the alerts need: queue backlog (length, oldest age from the `bot_sent_at`
header), Redis memory, what each outbox sink owes and since when; read by the real collector
from fakeredis."""

from __future__ import annotations

import json
import math
from typing import Any

import fakeredis
import pytest
import redis

from bot.application import stamp_publish_headers
from bot.jobs.envelope import ENQUEUED_AT_HEADER
from bot.observe.backlog import (
    SENT_AT_HEADER,
    message_age_s,
    priority_lists,
    read_backlog,
)
from bot.observe.capacity import outbox_owed_metrics, redis_memory_metrics
from bot.observe.metrics import consumed_queues
from bot.outbox.stream import Outbox
from tests.support.metrics_data import (
    KEYS,
    MAX_MEMORY,
    USED_MEMORY,
    InfoFakeRedis,
    collector,
    fill,
    kombu_message,
    samples,
)

NOW = 1_800_000_000.0


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


def test_priority_lists_are_named_as_kombu_names_them() -> None:
    assert priority_lists("celery", {}) == [
        "celery",
        "celery\x06\x163",
        "celery\x06\x166",
        "celery\x06\x169",
    ]
    options = {"global_keyprefix": "app:", "priority_steps": [5, 0]}
    assert priority_lists("q", options) == ["app:q", "app:q\x06\x165"]


def test_a_message_age_comes_from_its_sent_at_header_only() -> None:
    assert message_age_s(kombu_message("ops.sum", NOW - 12.5).encode(), NOW) == 12.5
    assert message_age_s(kombu_message("ops.sum", NOW + 3).encode(), NOW) == 0.0  # clock skew
    unusable: list[Any] = [
        None,
        b"",
        kombu_message("ops.sum", None).encode(),  # a publisher without bot's app
        b"\xff\xfe not utf-8",
        b"not json",
        b"[1, 2]",
        b'{"headers": "x"}',
        json.dumps({"headers": {SENT_AT_HEADER: "1800000000"}}).encode(),
        json.dumps({"headers": {SENT_AT_HEADER: True}}).encode(),
        json.dumps({"headers": {SENT_AT_HEADER: 12.0}}).encode(),  # 1970: no real time
        b'{"headers": {"bot_sent_at": NaN}}',
        b"[" * 100_000,
    ]
    assert [message_age_s(raw, NOW) for raw in unusable] == [None] * len(unusable)


def test_backlog_counts_every_priority_and_ages_the_oldest_next_message(
    client: fakeredis.FakeRedis,
) -> None:
    top, low, lowest = priority_lists("celery", {})[0], *priority_lists("celery", {})[2:]
    client.lpush(top, kombu_message("ops.sum", NOW - 40), kombu_message("ops.sum", NOW - 2))
    client.lpush(low, kombu_message("ops.sum", NOW - 90))
    client.lpush(lowest, b"\xff junk pushed by hand")
    client.lpush("unstamped", kombu_message("ops.sum", None))

    backlog = read_backlog(client, ["celery", "idle", "unstamped", "celery"], {}, NOW)

    by_queue = {q.queue: (q.length, q.oldest_age_s) for q in backlog}
    assert by_queue == {"celery": (4, 90.0), "idle": (0, 0.0), "unstamped": (1, None)}


def test_publishing_stamps_sent_at_on_every_task_and_enqueued_at_on_jobs() -> None:
    job: dict[str, Any] = {"task": "ops.sum"}
    plumbing: dict[str, Any] = {"task": "bot.pipeline.finish"}
    stamp_publish_headers(headers=job)
    stamp_publish_headers(headers=plumbing)
    assert set(job) == {"task", SENT_AT_HEADER, ENQUEUED_AT_HEADER}
    assert set(plumbing) == {"task", SENT_AT_HEADER}

    retry = {**job, SENT_AT_HEADER: 1.0}  # a retry carries its first publish's headers
    stamp_publish_headers(headers=retry)
    assert retry[SENT_AT_HEADER] > 1.0  # each publish its own time
    assert retry[ENQUEUED_AT_HEADER] == job[ENQUEUED_AT_HEADER]  # the report's: the first


def test_consumed_queues_come_from_the_record_else_the_settings() -> None:
    assert consumed_queues({"queues": '["b", "a"]'}, ["celery"]) == ["b", "a"]
    assert consumed_queues({}, ["celery"]) == ["celery"]
    assert consumed_queues({"queues": "not json"}, ["celery"]) == ["celery"]
    assert consumed_queues({"queues": '{"a": 1}'}, ["celery"]) == ["celery"]


def test_outbox_owed_by_group_ages_the_oldest_unread_or_pending_entry(
    client: fakeredis.FakeRedis,
) -> None:
    outbox = Outbox(client, KEYS)
    assert outbox.owed_by_group() == []  # no stream yet
    now_ms = int(NOW * 1000)
    for n, age_ms in enumerate((50_000, 20_000)):
        client.xadd(KEYS.outbox, {"job_id": f"j{n}"}, id=f"{now_ms - age_ms}-0")
    outbox.ensure_group("http")
    outbox.ensure_group("billing")
    outbox.read_new(KEYS.outbox, "billing", "c1", 1)  # one pending, one unread
    client.xgroup_create(KEYS.outbox, "done", id="$")

    def owed() -> dict[str, tuple[int, float]]:
        groups = outbox.owed_by_group(now_ms)
        return {g["group"]: (g["owed"], g["oldest_owed_age_s"]) for g in groups}

    assert owed() == {"http": (2, 50.0), "billing": (2, 50.0), "done": (0, 0.0)}
    outbox.ack(KEYS.outbox, "billing", f"{now_ms - 50_000}-0")
    assert owed()["billing"] == (1, 20.0)


def test_capacity_families_from_their_values() -> None:
    assert list(redis_memory_metrics({})) == []  # INFO refused: left out
    used, limit = list(redis_memory_metrics({"used_memory": 1024, "maxmemory": 0}))
    assert (used.samples[0].value, limit.samples[0].value) == (1024, 0)
    groups = [{"group": "http", "owed": 4, "oldest_owed_age_s": 12.5}]
    pending, age = list(outbox_owed_metrics(groups))
    assert [(s.name, s.labels, s.value) for s in [*pending.samples, *age.samples]] == [
        ("bot_outbox_pending", {"sink": "http"}, 4),
        ("bot_outbox_owed_age_seconds", {"sink": "http"}, 12.5),
    ]


def test_a_scrape_serves_the_new_series_with_their_values() -> None:
    client = InfoFakeRedis(decode_responses=True)
    fill(client)

    got = samples(client)

    assert got["bot_redis_up"] == 1
    assert got["bot_redis_memory_used_bytes"] == USED_MEMORY
    assert got["bot_redis_memory_max_bytes"] == MAX_MEMORY
    assert got['bot_queue_length{queue="celery"}'] == 3
    assert math.isclose(got['bot_queue_oldest_age_seconds{queue="celery"}'], 30, abs_tol=2)
    assert got['bot_queue_length{queue="reports"}'] == 0
    assert got['bot_queue_oldest_age_seconds{queue="reports"}'] == 0
    assert got['bot_outbox_pending{sink="http"}'] == 3
    assert math.isclose(got['bot_outbox_owed_age_seconds{sink="http"}'], 60, abs_tol=2)
    assert got["bot_outbox_dead"] == 1
    assert got['bot_worker_state{state="DEGRADED"}'] == 1


def test_a_redis_without_info_leaves_out_only_the_memory_series(
    client: fakeredis.FakeRedis,
) -> None:
    fill(client)  # fakeredis answers INFO with an error, as an ACL user without it gets

    got = samples(client)

    assert got["bot_redis_up"] == 1
    assert "bot_redis_memory_used_bytes" not in got
    assert got['bot_queue_length{queue="celery"}'] == 3


def test_an_unreachable_redis_serves_redis_up_0_only() -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)

    families = list(collector(down).collect())  # type: ignore[arg-type]

    assert [(f.name, f.samples[0].value) for f in families] == [("bot_redis_up", 0)]
