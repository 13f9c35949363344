"""Loads the Lua scripts that live next to this module (`bot/store/lua/*.lua`)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script


@cache
def lua_source(name: str) -> str:
    return files("bot.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def register(client: redis.Redis, name: str) -> Script:
    """`name`.lua registered on `client` (EVALSHA, falling back to EVAL after a Redis restart)."""
    return client.register_script(lua_source(name))
