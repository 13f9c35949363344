"""Celery's result meta of a job, built with Celery's own code, for bot's scripts to write.

Celery writes a job's result meta (`celery-task-meta-<id>`) twice: STARTED before the op body
(`task_track_started`) and SUCCESS after it, each a GET then a SET and PUBLISH from the pool
child: more Redis round trips than bot's own acquire and complete (docs/profiles/pool-child.txt).
When Celery's results live in the job records' Redis database (no `BOT_RESULT_URL` elsewhere),
acquire.lua writes the STARTED meta and complete.lua the SUCCESS meta with its PUBLISH (which
wakes `AsyncResult.get()`), each in the same atomic step as the job record. Celery is then told
not to write the result again (`request.ignore_result`, which `Backend.mark_as_done` reads; its
chord bookkeeping still runs). The meta is what Celery's own `_get_result_meta` builds and the
backend encodes, so every reader sees what Celery would have written
(tests/integration/test_celery_meta.py compares the two).

Left to Celery, as before: eager calls (`apply`, which store nothing), failures and retries
(they carry a traceback, and are rare), jobs whose caller asked to ignore the result, and
messages carrying canvas callbacks, a chain or a chord, whose `children` Celery fills in after
the body returns.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Task
from celery.states import STARTED, SUCCESS
from kombu.utils.encoding import bytes_to_str

from bot.jobs.store import ResultMeta


def writes_started(task: Task) -> bool:
    """Whether acquire.lua writes this job's STARTED meta (op tasks then do not track it
    themselves: `track_started` is off for them, bot.application.register_op)."""
    request = task.request
    if not task.app.settings.results_in_job_store:
        return False
    return not (request.is_eager or request.ignore_result or task.ignore_result)


def folds(task: Task) -> bool:
    """Whether complete.lua writes this job's SUCCESS meta instead of Celery."""
    request = task.request
    return writes_started(task) and not (request.callbacks or request.chain or request.chord)


def started(task: Task) -> ResultMeta | None:
    """The STARTED meta Celery's `task_track_started` writes (None: it cannot be encoded)."""
    return _meta(task, {"pid": os.getpid(), "hostname": task.request.hostname}, STARTED)


def succeeded(task: Task, result: Any) -> ResultMeta | None:
    """The SUCCESS meta Celery writes when the body returns `result`. None when it cannot be
    encoded: Celery's own write then fails the task as it always did (EncodeError)."""
    return _meta(task, result, SUCCESS)


def _meta(task: Task, result: Any, state: str) -> ResultMeta | None:
    backend = task.backend
    job_id = task.request.id
    try:
        meta = backend._get_result_meta(
            result=backend.encode_result(result, state),
            state=state,
            traceback=None,
            request=task.request,
        )
        meta["task_id"] = job_id
        value = backend.encode(meta)
    except Exception:
        return None
    return ResultMeta(
        key=bytes_to_str(backend.get_key_for_task(job_id)),
        value=value,
        ttl_s=int(backend.expires or 0),
    )


def written(task: Task) -> None:
    """Tell Celery's tracer that the result is stored already (`mark_as_done` skips it)."""
    task.request.ignore_result = True
