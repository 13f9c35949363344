"""The `bot` command line. One module per concern registers its commands on `main`:
jobs (submit, status, ops), pipelines, schedules, triggers, fleet (fleet, health), outbox, up
(run a local fleet)."""

from __future__ import annotations

import importlib

import click

_COMMAND_MODULES = ("jobs", "pipelines", "schedules", "triggers", "fleet", "outbox", "up")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """bot: run jobs reliably on a fleet of Celery workers."""


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"bot.cli.{name}")
        for command in module.COMMANDS:
            main.add_command(command)


_register_commands()
