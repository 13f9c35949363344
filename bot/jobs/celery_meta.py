"""Celery's result meta of a job, as Celery builds it, for bot's scripts to write.

Celery writes a job's result meta (`celery-task-meta-<id>`) twice: STARTED before the op body
(`task_track_started`) and SUCCESS after it, each a GET then a SET and PUBLISH from the pool
child: more Redis round trips than bot's own acquire and complete (docs/profiles/pool-child.txt).
When Celery's results live in the job records' Redis database (no `BOT_RESULT_URL` elsewhere),
acquire.lua writes the STARTED meta and complete.lua the SUCCESS meta with its PUBLISH (which
wakes `AsyncResult.get()`), each in the same atomic step as the job record. Celery is then told
not to write the result again (`request.ignore_result`, which `Backend.mark_as_done` reads; its
chord bookkeeping still runs). The meta has exactly the fields Celery's `_get_result_meta`
builds, encoded as its JSON backend does, so every reader sees what Celery would have written
(tests/e2e/test_results.py compares the two).

Left to Celery, as before: eager calls (`apply`, which store nothing), failures and retries
(they carry a traceback, and are rare), jobs whose caller asked to ignore the result, and
messages carrying canvas callbacks, a chain or a chord, whose `children` Celery fills in after
the body returns.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from celery import Task
from celery.states import READY_STATES, STARTED, SUCCESS
from kombu.utils import json as kombu_json
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
        value = kombu_json.dumps(result_meta(task, backend.encode_result(result, state), state))
    except Exception:
        return None
    return ResultMeta(
        key=bytes_to_str(backend.get_key_for_task(job_id)),
        value=value,
        ttl_s=int(backend.expires or 0),
    )


def result_meta(task: Task, result: Any, state: str) -> dict[str, Any]:
    """The meta Celery's `Backend._get_result_meta` builds (plus `task_id`), field for field.

    Built here because Celery's costs ~100 µs a job in a pool child (its configuration lookup
    and timezone conversion: docs/benchmarks.md); a message with stamps, which adds fields,
    still goes through Celery's own. tests/e2e/test_results.py compares the two."""
    request = task.request
    if getattr(request, "stamps", None):
        meta = task.backend._get_result_meta(
            result=result, state=state, traceback=None, request=request
        )
    else:
        meta = {
            "status": state,
            "result": result,
            "traceback": None,
            "children": [r.as_tuple() for r in getattr(request, "children", None) or ()],
            "date_done": _now(task).isoformat() if state in READY_STATES else None,
        }
        if request.group:
            meta["group_id"] = request.group
        if request.parent_id:
            meta["parent_id"] = request.parent_id
        if task.app.conf.result_extended:
            meta.update(_extended_fields(request))
    meta["task_id"] = request.id
    return meta


def _now(task: Task) -> datetime:
    """`app.now()` (the current time in the app's time zone), without its UTC round trip."""
    return datetime.now(task.app.timezone)


def _extended_fields(request: Any) -> dict[str, Any]:
    info = request.delivery_info
    return {
        "name": request.task,
        "args": request.args,
        "kwargs": request.kwargs,
        "worker": request.hostname,
        "retries": request.retries,
        "queue": info.get("routing_key") if info else None,
    }


def written(task: Task) -> None:
    """Tell Celery's tracer that the result is stored already (`mark_as_done` skips it)."""
    task.request.ignore_result = True
