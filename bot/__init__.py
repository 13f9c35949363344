"""bot: a worker fleet for running jobs reliably on many hosts, on Celery and Redis.

`bot.app` is the Celery app (`celery -A bot worker`). Importing `bot` reads the `BOT_*`
settings once; a bad value stops the process with one line and exit code 2.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from bot.jobs.progress import progress
from bot.ops import op
from config.settings import ConfigError, load_settings

if TYPE_CHECKING:
    from bot.application import BotApp

__all__ = ["app", "op", "progress"]
__version__ = "0.1.0"


def _build_app() -> BotApp:
    from bot.application import create_app

    try:
        return create_app(load_settings())
    except ConfigError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        raise


app = _build_app()
