"""The `@op` decorator and the op registry: name -> payload model, function, retry policy.

An op is a plain function. Its payload model is built from its typed parameters, or is the
one pydantic model it takes. The registry is independent of any Celery app; `bot.application`
turns each registered op into a Celery task named `ops.<name>`.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from bot.errors import PayloadRejected, TransientError, UnknownOp

TASK_PREFIX = "ops."
DEFAULT_MAX_RETRIES = 3
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def op_name_problem(name: str) -> str | None:
    """Why `name` is not a valid op name, or None."""
    if _NAME.match(name):
        return None
    return f"op name must match {_NAME.pattern}"


@dataclass(frozen=True)
class OpSpec:
    """One registered op."""

    name: str
    func: Callable[..., Any]
    payload_model: type[BaseModel]
    takes_model: bool
    transient: tuple[type[BaseException], ...] = (TransientError,)
    max_retries: int = DEFAULT_MAX_RETRIES
    queue: str | None = None
    description: str = ""
    module: str = field(default="")

    @property
    def task_name(self) -> str:
        return TASK_PREFIX + self.name

    def validate(self, payload: Mapping[str, Any]) -> BaseModel:
        """The payload as the op's model; `PayloadRejected` with field errors otherwise."""
        try:
            return self.payload_model.model_validate(dict(payload))
        except ValidationError as exc:
            raise PayloadRejected(
                f"invalid payload for op {self.name!r}: {_summarise(exc)}", field_errors(exc)
            ) from None

    def call(self, model: BaseModel) -> Any:
        """Run the op body on a validated payload; return a JSON-ready result."""
        if self.takes_model:
            result = self.func(model)
        else:
            result = self.func(**{name: getattr(model, name) for name in type(model).model_fields})
        return result.model_dump(mode="json") if isinstance(result, BaseModel) else result

    def schema(self) -> dict[str, Any]:
        return self.payload_model.model_json_schema()


def check_size(payload: Mapping[str, Any], limit_bytes: int) -> None:
    """PayloadRejected when the payload's JSON is over `limit_bytes` (BOT_MAX_PAYLOAD_BYTES)."""
    size = len(json.dumps(payload, default=str, separators=(",", ":")))
    if size > limit_bytes:
        raise PayloadRejected(
            f"payload of {size} bytes is over BOT_MAX_PAYLOAD_BYTES ({limit_bytes})",
            [{"loc": [], "msg": f"payload larger than {limit_bytes} bytes", "type": "too_large"}],
        )


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors reduced to JSON-safe {loc, msg, type} items."""
    return [
        {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False)
    ]


def _summarise(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    )


class OpRegistry:
    """name -> OpSpec. One process-wide instance, `REGISTRY`."""

    def __init__(self) -> None:
        self._specs: dict[str, OpSpec] = {}

    def add(self, spec: OpSpec) -> None:
        existing = self._specs.get(spec.name)
        # The same function seen again (a module imported twice) is fine; another one is not.
        if existing is not None and _origin(existing) != _origin(spec):
            raise ValueError(f"op {spec.name!r} is already registered by {existing.module}")
        self._specs[spec.name] = spec

    def get(self, name: str) -> OpSpec:
        try:
            return self._specs[name.removeprefix(TASK_PREFIX)]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise UnknownOp(f"unknown op {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.removeprefix(TASK_PREFIX) in self._specs

    def __iter__(self) -> Iterator[OpSpec]:
        return iter(sorted(self._specs.values(), key=lambda spec: spec.name))

    def names(self) -> list[str]:
        return sorted(self._specs)


def _origin(spec: OpSpec) -> tuple[str, str]:
    return spec.module, spec.func.__qualname__


REGISTRY = OpRegistry()


def op(
    name: str,
    *,
    transient: tuple[type[BaseException], ...] = (),
    max_retries: int = DEFAULT_MAX_RETRIES,
    queue: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func` as the op `name` (Celery task `ops.<name>`).

    `transient`: exception types that mean "try again later" (retried with exponential backoff
    and full jitter up to `max_retries`); `TransientError` always is. Anything else fails.
    """
    problem = op_name_problem(name)
    if problem is not None:
        raise ValueError(f"op name {name!r}: {problem}")

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        model, takes_model = payload_model_for(name, func)
        REGISTRY.add(
            OpSpec(
                name=name,
                func=func,
                payload_model=model,
                takes_model=takes_model,
                transient=(TransientError, *transient),
                max_retries=max_retries,
                queue=queue,
                description=inspect.getdoc(func) or "",
                module=func.__module__,
            )
        )
        return func

    return register


def payload_model_for(name: str, func: Callable[..., Any]) -> tuple[type[BaseModel], bool]:
    """The pydantic model of `func`'s payload, and whether `func` takes that model itself."""
    params = list(inspect.signature(func).parameters.values())
    hints = get_type_hints(func, include_extras=True)
    if len(params) == 1 and _is_model(hints.get(params[0].name)):
        return hints[params[0].name], True
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"op {name!r}: *args/**kwargs cannot be validated; name each field")
        if param.name not in hints:
            raise TypeError(f"op {name!r}: parameter {param.name!r} needs a type annotation")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model_name = "".join(part.capitalize() for part in re.split(r"[_.-]", name)) + "Payload"
    model = create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)
    return model, False


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)
