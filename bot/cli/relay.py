"""`python -m bot.cli.relay`: one outbox relay (bot/outbox/relay.py) in the foreground, outside a
worker: against BOT_REDIS_URL, to BOT_REPORT_URL, until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import uuid

from bot.outbox.relay import Relay
from bot.outbox.sinks import HttpSink
from bot.runtime.process import RUNTIME
from bot.store.connect import connect
from config.logging_setup import LogContext, configure_logging
from config.settings import ConfigError, load_settings


def main(argv: list[str] | None = None) -> None:
    """`python -m bot.cli.relay [--status-file PATH]`: one relay in the foreground against
    BOT_REDIS_URL until SIGTERM/SIGINT; with --status-file, its snapshot() as JSON there."""

    parser = argparse.ArgumentParser(prog="python -m bot.cli.relay")
    parser.add_argument("--status-file", help="write the relay's snapshot (JSON) here")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if not settings.report_url:
            raise ConfigError("invalid configuration: BOT_REPORT_URL: must be set for a relay")
    except ConfigError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        raise
    configure_logging(settings)
    consumer = RUNTIME.instance_id or f"relay-{uuid.uuid4().hex}"
    LogContext.instance_id = consumer
    relay = Relay.from_settings(
        settings, connect(settings), HttpSink.from_settings(settings), consumer
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: relay.request_stop())
    # What start-up made (the app, every module) lives as long as the process: frozen, it is
    # left out of the full collections the relay's passes trigger, which stay short.
    gc.freeze()
    relay.start()
    print(f"relay {consumer} ready (pid {os.getpid()})", flush=True)
    while relay.snapshot()["running"]:
        if args.status_file:
            tmp = f"{args.status_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump(relay.snapshot(), out)
            os.replace(tmp, args.status_file)
        time.sleep(0.1)
    relay.stop()
    relay.sink.close()


if __name__ == "__main__":
    main()
