"""bot: a worker fleet for running jobs reliably on many hosts, on Celery and Redis.

`bot.app` is the Celery app (`celery -A bot worker`); `op` declares an op, `pipeline` (with
`stage` and `parallel`) a pipeline of ops, `on` a trigger (a report starts an op or pipeline;
its function takes a `Report`), `schedule` an op or pipeline run on a cron expression or an
interval (`celery -A bot beat`). Importing `bot` reads the `BOT_*`
settings once; a bad value stops the process with one line and exit code 2.
"""

from __future__ import annotations

import sys

from bot.application import BotApp, create_app
from bot.base.version import __version__
from bot.jobs.progress import progress
from bot.jobs.reports import Report
from bot.ops import op
from bot.pipelines import on, parallel, pipeline, schedule, stage
from config.settings import ConfigError, load_settings

__all__ = [
    "Report",
    "__version__",
    "app",
    "on",
    "op",
    "parallel",
    "pipeline",
    "progress",
    "schedule",
    "stage",
]


def _build_app() -> BotApp:
    try:
        return create_app(load_settings())
    except ConfigError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        raise


app = _build_app()
