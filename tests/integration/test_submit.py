"""bot/flows/submit.py against a real Redis: an id claimed by a submitter that died before
sending is sent again by a submitter that may see its event twice (`resend_queued`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from bot.flows.run_record import RunStore
from bot.flows.submit import as_sent, submit_op, submit_pipeline
from bot.jobs.envelope import payload_digest

pytestmark = pytest.mark.integration

SUM = {"a": 1, "b": 2}


@pytest.fixture
def app(make_settings: Callable[..., Any]) -> Iterator[BotApp]:
    app = create_app(make_settings(), fleet=False)
    yield app
    app.close()


def claimed_but_never_sent(app: BotApp, job_id: str, payload: dict[str, Any]) -> None:
    digest = payload_digest([], as_sent(payload))
    assert app.job_store().claim(job_id, "sum", "celery", digest, 60)


def test_a_claimed_id_with_no_message_is_sent_again_only_when_asked(
    app: BotApp, client: redis.Redis
) -> None:
    claimed_but_never_sent(app, "trg.x.1", SUM)

    assert not submit_op(app, "sum", SUM, job_id="trg.x.1").enqueued
    assert client.llen("celery") == 0
    again = submit_op(app, "sum", SUM, job_id="trg.x.1", resend_queued=True)
    assert (again.enqueued, again.resent) == (False, True)
    assert client.llen("celery") == 1


def test_an_id_that_ran_or_holds_another_payload_is_not_sent_again(
    app: BotApp, client: redis.Redis
) -> None:
    claimed_but_never_sent(app, "trg.x.2", SUM)
    claimed_but_never_sent(app, "trg.x.3", SUM)
    client.hset("bot:job:trg.x.2", "state", "succeeded")

    assert not submit_op(app, "sum", SUM, job_id="trg.x.2", resend_queued=True).resent
    other = {"a": 5, "b": 5}
    assert not submit_op(app, "sum", other, job_id="trg.x.3", resend_queued=True).resent
    assert client.llen("celery") == 0


def test_a_claimed_run_with_no_start_message_is_sent_again(
    app: BotApp, client: redis.Redis
) -> None:
    payload = {"a": 1, "b": 2}
    digest = payload_digest([], as_sent(payload))
    assert RunStore(client, app.keys).claim("run-x", "difference_of_squares", "celery", digest, 60)

    again = submit_pipeline(
        app, "difference_of_squares", payload, run_id="run-x", resend_queued=True
    )

    assert again.resent and client.llen("celery") == 1


def test_a_submission_interrupted_inside_its_claim_frees_the_id(
    app: BotApp, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app.job_store()
    claim = store.claim

    def claim_then_sigterm(*args: Any, **kwargs: Any) -> bool:
        claim(*args, **kwargs)  # Redis ran the script; its reply never reached the caller
        raise SystemExit(0)

    monkeypatch.setattr(store, "claim", claim_then_sigterm)
    with pytest.raises(SystemExit):
        submit_op(app, "sum", SUM, job_id="sched.x.1")
    monkeypatch.undo()

    assert not client.exists("bot:job:sched.x.1")
    assert submit_op(app, "sum", SUM, job_id="sched.x.1").enqueued
