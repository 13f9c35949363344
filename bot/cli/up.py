"""`bot up`: run a local fleet (worker with --autoscale, Flower, and Redis if none answers)."""

from __future__ import annotations

import sys

import click

from config.logging_setup import configure_logging


@click.command()
@click.option("--autoscale", default="4,1", show_default=True, help="MAX,MIN pool processes.")
@click.option("--flower/--no-flower", default=True, show_default=True, help="Also run Flower.")
@click.option("--flower-address", default="127.0.0.1", show_default=True)
@click.option("--flower-port", default=5555, show_default=True, type=int)
def up(autoscale: str, flower: bool, flower_address: str, flower_port: int) -> None:
    """Run a local fleet until Ctrl-C: a worker, Flower, and a private Redis when needed."""
    from bot import app
    from bot.localfleet import LocalFleet, run

    configure_logging(app.settings)
    fleet = LocalFleet(app.settings, autoscale, flower, flower_address, flower_port)
    sys.exit(run(fleet))


COMMANDS: list[click.Command] = [up]
