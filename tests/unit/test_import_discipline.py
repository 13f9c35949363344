"""What `import bot` may import, and the GC freeze before the pool forks: a worker's memory.

`celery -A bot worker` imports bot in its main process before the prefork pool forks, so every
module it imports is in every pool child too. The libraries only some worker processes use are
imported when the service that uses them starts (bot/fleet/services.py): httpx and its stack
for the relay (BOT_REPORT_URL), prometheus_client for /metrics (BOT_METRICS_PORT); that they
still work when configured is tests/e2e/test_worker_services.py. Each check runs in a fresh
interpreter: this test process has imported everything already.

Not checked, because bot does not decide it: click (Celery's own `celery.app.base` imports it),
and flower and prometheus_client in a worker (the `celery` command loads every installed
`celery.commands` plugin, Flower's among them, in stock Celery as in bot).
"""

from __future__ import annotations

import json
import os

from tests.support.processes import REPO_ROOT, run_python

#: Top-level packages `import bot` must not import with default settings.
NOT_IMPORTED = (
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "rich",
    "pygments",
    "prometheus_client",
    "flower",
    "tornado",
)


def default_env() -> dict[str, str]:
    """This environment without any BOT_* variable (bot's defaults), bot importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def run_json(code: str) -> object:
    done = run_python(code, default_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_bot_leaves_out_what_only_some_processes_use() -> None:
    imported = run_json(
        "import json, sys\n"
        "import bot\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    assert isinstance(imported, list)
    assert "bot" in imported and "celery" in imported
    assert sorted(set(NOT_IMPORTED) & set(imported)) == []


def test_the_modules_a_worker_process_loads_leave_out_the_http_sink() -> None:
    # The fleet step and its services, the relay and the breakers' names: what a worker with
    # default settings has loaded; the HTTP sink (httpx) comes only with BOT_REPORT_URL.
    imported = run_json(
        "import json, sys\n"
        "import bot, bot.fleet.step, bot.fleet.services, bot.outbox.relay, bot.outbox.delivery\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert isinstance(imported, list)
    assert "bot.outbox.sinks" not in imported
    assert "bot.observe.metrics" not in imported
    assert "httpx" not in imported


def test_the_worker_freezes_start_up_objects_once_before_the_pool_forks() -> None:
    # AsynPool sends worker_before_create_process before each fork; only the first freezes
    # (a later one would freeze requests in flight out of the main process's collections).
    counts = run_json(
        "import gc, json\n"
        "from celery import signals\n"
        "import bot\n"
        "before = gc.get_freeze_count()\n"
        "signals.worker_before_create_process.send(sender=None)\n"
        "first = gc.get_freeze_count()\n"
        "later = [[] for _ in range(1000)]\n"
        "signals.worker_before_create_process.send(sender=None)\n"
        "print(json.dumps([before, first, gc.get_freeze_count()]))\n"
    )
    assert isinstance(counts, list)
    before, first, second = counts
    assert before == 0
    assert first > 10_000  # modules, the app, the ops: start-up
    assert second == first
