"""What must hold when several jobs run at once in one process (Celery's threads pool,
`-P threads`): progress follows the job of the calling thread, the app's Redis client and job
store are never half-made, and an op that raises SystemExit in a pool thread is handed back
like a lost pool child instead of leaving its request hanging."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from billiard.exceptions import WorkerLostError
from celery.concurrency.base import apply_target
from celery.worker.request import create_request_cls

from bot import application
from bot.application import create_app
from bot.cli.fleet import pool_cell
from bot.jobs import child_lost, progress
from bot.jobs.child_lost import OpRequest
from config.settings import Settings


class FakeTask:
    """What progress() uses of a task: its request id, the job store, state and events."""

    def __init__(self, job_id: str, sent: list[tuple[str, float]]) -> None:
        self.request = SimpleNamespace(id=job_id)
        store = SimpleNamespace(set_progress=lambda job, meta: sent.append((job, meta["current"])))
        self.app = SimpleNamespace(job_store=lambda: store)

    def update_state(self, **_: Any) -> None:
        pass

    def send_event(self, *_: Any, **__: Any) -> None:
        pass


def test_progress_reaches_the_job_of_the_calling_thread() -> None:
    # Given two jobs running at once in two threads of one process
    sent: list[tuple[str, float]] = []
    bound, unbound = threading.Barrier(2), threading.Barrier(2)

    def job(job_id: str, first_to_end: bool) -> bool:
        progress.bind(FakeTask(job_id, sent))
        bound.wait()  # both bound
        if first_to_end:
            progress.unbind()  # this one ends first ...
        unbound.wait()
        if first_to_end:
            return False
        # ... and the other one still reports its own last step
        return progress.progress(3, 3)

    with ThreadPoolExecutor(2) as pool:
        early = pool.submit(job, "job-a", True)
        late = pool.submit(job, "job-b", False)
        assert late.result(5) is True and early.result(5) is False

    # Then the report went to job-b, not to job-a nor nowhere
    assert sent == [("job-b", 3)]
    progress.unbind()


def test_progress_throttle_is_per_thread() -> None:
    sent: list[tuple[str, float]] = []
    step = threading.Barrier(2)

    def job(job_id: str) -> list[bool]:
        progress.bind(FakeTask(job_id, sent))
        step.wait()
        first = progress.progress(1, 10)  # the first update of each job goes out
        step.wait()
        second = progress.progress(2, 10)  # throttled, each against its own last send
        progress.unbind()
        return [first, second]

    with ThreadPoolExecutor(2) as pool:
        results = [pool.submit(job, f"job-{n}") for n in range(2)]
        assert [r.result(5) for r in results] == [[True, False], [True, False]]
    assert sorted(sent) == [("job-0", 1), ("job-1", 1)]


def test_threads_racing_for_the_apps_client_get_a_whole_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an app whose first connection takes a moment (as a real one may)
    app = create_app(Settings(redis_url="redis://127.0.0.1:9/0"), fleet=False)
    real_connect = application.connect

    def slow_connect(settings: Settings) -> Any:
        time.sleep(0.01)
        return real_connect(settings)

    monkeypatch.setattr(application, "connect", slow_connect)
    start = threading.Barrier(8)

    def first_job() -> tuple[Any, Any]:
        start.wait()
        store = app.job_store()
        return store, app.redis()

    # When 8 pool threads take their first job at once
    with ThreadPoolExecutor(8) as pool:
        got = [f.result(5) for f in [pool.submit(first_job) for _ in range(8)]]

    # Then each got a job store (never None), and after the race one client stays
    assert all(store is not None for store, _ in got)
    assert app.redis() is app.redis() and app.job_store().client is app.redis()
    app.close()


def test_sys_exit_in_an_op_under_the_threads_pool_ends_in_on_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the request class Celery's strategy makes from OpRequest for a task
    handed: list[tuple[str, int | None]] = []
    monkeypatch.setattr(
        child_lost, "hand_back", lambda app, job_id, pid: handed.append((job_id, pid)) or True
    )
    failures: list[BaseException] = []
    monkeypatch.setattr(
        child_lost.Request,
        "on_failure",
        lambda self, exc_info, **_: failures.append(exc_info.exception),
    )
    task = SimpleNamespace(time_limit=None, soft_time_limit=None, acks_late=True, app=None)
    pool = SimpleNamespace(apply_async=None)
    app = SimpleNamespace(use_fast_trace_task=False)
    request_cls = create_request_cls(OpRequest, task, pool, "w@h", None, app=app)
    request = object.__new__(request_cls)
    request.id = "job-x"
    request._task = SimpleNamespace(app=None)
    request.worker_pid = 1234

    def op_body() -> None:
        raise SystemExit(3)

    # When the op raises SystemExit in a pool thread (Celery's apply_target, as the threads
    # pool runs it, with the request's callbacks)
    apply_target(op_body, (), {}, callback=request.on_success)

    # Then the request fails as a lost worker, and the job is handed back
    [failure] = failures
    assert isinstance(getattr(failure, "exc", failure), WorkerLostError)
    assert handed == [("job-x", 1234)]


def test_a_normal_success_passes_through_unchanged() -> None:
    seen: list[Any] = []
    on_success = child_lost.lost_thread_to_failure(lambda self, value, **kw: seen.append(value))
    on_success(SimpleNamespace(), (False, 3, 0.1))
    assert seen == [(False, 3, 0.1)]


@pytest.mark.parametrize(
    ("limits", "task_limits", "warned"),
    [
        ((None, None), (None, None), False),
        ((1, None), (None, None), True),
        ((None, None), (5, None), True),
    ],
)
def test_a_time_limit_the_pool_cannot_enforce_is_warned_about(
    limits: tuple[Any, Any], task_limits: tuple[Any, Any], warned: bool
) -> None:
    request = SimpleNamespace(
        id="job-t",
        time_limits=limits,
        task=SimpleNamespace(time_limit=task_limits[0], soft_time_limit=task_limits[1]),
    )
    assert child_lost.warn_time_limit_not_enforced(request) is warned


@pytest.mark.parametrize(
    ("record", "cell"),
    [
        ({"pool": "8", "pool_kind": "celery.concurrency.thread"}, "8 threads"),
        ({"pool": "4", "pool_kind": "celery.concurrency.prefork"}, "4"),
        ({"pool": "2"}, "2"),
        ({}, "-"),
    ],
)
def test_bot_fleet_names_a_pool_other_than_prefork(record: dict[str, str], cell: str) -> None:
    assert pool_cell(record) == cell
