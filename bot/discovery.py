"""Op discovery: every module of the `tasks` package, modules named in `BOT_OPS_MODULES`, and
modules published by installed distributions under the `bot.ops` entry-point group.

Importing a module runs its `@op` decorators, which fill `bot.ops.REGISTRY`, and its
`pipeline(...)` calls (`bot.pipelines.discovery` runs this, then the checks that waited for
it). This happens when `bot` is imported (not only in a worker), so Flower's copy of the app
knows every op too.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from importlib.metadata import entry_points

from config.settings import ConfigError

ENTRY_POINT_GROUP = "bot.ops"
BUILTIN_PACKAGE = "tasks"


def builtin_modules(package: str = BUILTIN_PACKAGE) -> list[str]:
    pkg = importlib.import_module(package)
    return [f"{package}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)]


def entry_point_modules() -> list[str]:
    return [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]


def discover_ops(extra_modules: Iterable[str] = ()) -> list[str]:
    """Import every op module; return their names. A module that fails to import is a
    configuration error naming it (a worker must not start with half its ops)."""
    modules = [*builtin_modules(), *extra_modules, *entry_point_modules()]
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"invalid configuration: BOT_OPS_MODULES: cannot import op module {name!r}: {exc}"
            ) from None
    return modules
