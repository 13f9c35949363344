"""Consumer inboxes: the Redis lists where bot's transport keeps a message between taking it off
its queue and recording it as unacked (bot/broker/inbox.py says why).

Each worker instance has one inbox per queue list it reads, `bot:inbox:{instance_id}:{list}`,
and a set `bot:inboxes:{instance_id}` naming those lists, so the reaper can return the inboxes
of a dead instance without scanning the keyspace. An inbox is empty but for the few
milliseconds of a take, or after a failure: a reply lost to a Redis shutdown, a Redis error
before the unacked record, or the process killed in between.

Key names here are bot's (under BOT_KEY_PREFIX); kombu's `global_keyprefix`, when set, is put
in front of all of them by the caller that talks to Redis through kombu (`prefixed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from bot.store.scripts import lua_source


def inbox_key(prefix: str, instance_id: str, source: str) -> str:
    """list: the inbox of `instance_id` for the queue list `source`."""
    return f"{prefix}:inbox:{instance_id}:{source}"


def registry_key(prefix: str, instance_id: str) -> str:
    """set: the queue lists `instance_id` has had an inbox for."""
    return f"{prefix}:inboxes:{instance_id}"


def prefixed(global_keyprefix: str | None, key: str) -> str:
    """`key` as Redis names it under kombu's `global_keyprefix`."""
    return f"{global_keyprefix or ''}{key}"


@cache
def _code(name: str) -> str:
    """A script without its leading comment: EVAL sends the body on every take."""
    source = lua_source(name)
    return source[source.index("]]") + 2 :].strip() if source.startswith("--[[") else source


def pop_args(sources: list[str], inboxes: list[str]) -> list[Any]:
    """The EVAL command that takes the next message of `sources` into its inbox (EVAL, not
    EVALSHA: a Redis restarted under the consumer has no script cache, and the read is sent
    and answered asynchronously, with no place to load it again)."""
    return ["EVAL", _code("inbox_pop"), 2 * len(sources), *sources, *inboxes]


def return_inboxes(client: Any, pairs: Iterable[tuple[str, str]]) -> int:
    """Put back every message held in the (inbox, source list) `pairs`, as Redis names them
    (prefixed); one EVAL. Returns how many went back."""
    inboxes, sources = [], []
    for inbox, source in pairs:
        inboxes.append(inbox)
        sources.append(source)
    if not inboxes:
        return 0
    # execute_command: EVAL is not among the commands kombu's prefixing client rewrites
    reply = client.execute_command(
        "EVAL", _code("inbox_return"), 2 * len(inboxes), *inboxes, *sources
    )
    return int(reply)
