"""How one stage's output becomes the next stage's input, and the check, at definition, that
every stage fits the next.

The contract:

1. The first stage receives the pipeline's payload. A parallel stage gives the same input to
   each of its ops.
2. A stage of one op passes its op's return value on, as is, as the next stage's payload: it
   must be a JSON object (a pydantic model, a TypedDict, a dict) that validates against the
   next op's payload model. An op whose payload model is built from its parameters refuses
   fields it does not name, so the output must not carry extra fields either.
3. A parallel stage passes `{"results": [out_1, out_2, ...]}` on: its ops' outputs in
   declared order. The next op takes a list field `results` (e.g. `results: list[float]`).
4. A stage with `on_failure="continue"` whose op fails for good passes its `default` on
   instead (inside `results` for a member of a parallel stage). The default must validate as
   the op's return type; it is kept as the JSON value that type gives it, and that value must
   fit the next stage too (it is checked even when the return type cannot be).
5. The last stage's output is the pipeline's result.

The check, per op, uses the return annotation (`-> T`): pydantic's JSON Schema of `T` in
serialization mode (what the result looks like after JSON, every field of a model present)
gives representative values (bot/pipelines/samples.py), and each is validated against the
next op's payload model, as a worker validates a payload. A type error (wrong type, a field
missing or not accepted, not an object) refuses the pipeline with a `PipelineDefinitionError`
naming both stages and the field. Value constraints (ranges, lengths, patterns, validators)
are left to run time, where every stage's input is validated again like any op payload.
What has no shape before run time (`Any`, no return annotation, the keys of a `dict[str, X]`)
is accepted, listed in `PipelineSpec.unchecked` and logged; a `dict[str, X]`'s values are
checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import PydanticSchemaGenerationError, PydanticUserError, TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticSerializationError

from bot.ops import OpSpec
from bot.pipelines.samples import (
    UNCHECKED,
    OpenMapping,
    Path,
    render_path,
    representative_values,
    variations,
)
from bot.pipelines.stages import Parallel, PipelineDefinitionError, Stage, members, stage_label

log = logging.getLogger(__name__)

#: The field a parallel stage's outputs arrive in.
RESULTS_FIELD = "results"

#: pydantic error types about a value, not its type: left to run-time validation.
_VALUE_ERRORS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "multiple_of",
        "finite_number",
        "too_short",
        "too_long",
        "string_too_short",
        "string_too_long",
        "string_pattern_mismatch",
        "bytes_too_short",
        "bytes_too_long",
        "decimal_max_digits",
        "decimal_max_places",
        "decimal_whole_digits",
        "value_error",
        "assertion_error",
        "date_past",
        "date_future",
        "datetime_past",
        "datetime_future",
    }
)
#: Errors about keys: reported even when the value under the key is unchecked.
_KEY_ERRORS = frozenset({"missing", "extra_forbidden"})


class _OutputSchema(GenerateJsonSchema):
    """Serialization mode, where every field of a model or dataclass is required: an op's
    result is dumped whole (`OpSpec.call`), defaults included. TypedDict keys keep their own
    `total`/`NotRequired`."""

    def field_is_required(self, field: Any, total: bool) -> bool:
        if field["type"] != "typed-dict-field" and field.get("serialization_exclude_if") is None:
            return True
        return super().field_is_required(field, total)


@dataclass(frozen=True)
class StageOutput:
    """What one stage passes on: its type for messages, its JSON Schema, representative values
    of that type, and what it passes on when an op of it fails and continues: (op, value)."""

    label: str
    schema: dict[str, Any]
    samples: list[Any]
    notes: list[str] = field(default_factory=list)
    defaults: list[tuple[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Checked:
    """A pipeline whose stages fit: the stages with their defaults as JSON, the pipeline's
    input and output JSON Schemas, and what was accepted unchecked."""

    stages: tuple[Stage | Parallel, ...]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    unchecked: tuple[str, ...]


def check(name: str, stages: Sequence[Stage | Parallel], ops: Mapping[str, OpSpec]) -> Checked:
    """Check that each stage's output fits the next; `ops` has every op the stages name."""
    checked: list[Stage | Parallel] = []
    outputs: list[StageOutput] = []
    for index, item in enumerate(stages, 1):
        normalised, output = _stage_output(name, index, item, ops)
        checked.append(normalised)
        outputs.append(output)
    unchecked: list[str] = []
    for index in range(1, len(checked)):
        prev, nxt, output = checked[index - 1], checked[index], outputs[index - 1]
        for member in members(nxt):
            _check_link(name, (index, prev, output), (index + 1, nxt), ops[member.op])
        for note in output.notes:
            line = f"{note}, not checked against {stage_label(index + 1, nxt)}"
            unchecked.append(line)
            log.info("pipeline %r: %s", name, line)
    first = [ops[member.op].schema() for member in members(checked[0])]
    return Checked(
        stages=tuple(checked),
        input_schema=first[0] if len(first) == 1 else {"allOf": first},
        output_schema=outputs[-1].schema,
        unchecked=tuple(unchecked),
    )


def return_annotation(spec: OpSpec) -> Any:
    """The op's return annotation; `Any` when it has none."""
    return get_type_hints(spec.func, include_extras=True).get("return", Any)


def type_label(annotation: Any) -> str:
    """A readable name of a type: `int | float`, `list[float]`, `Page` (no Annotated noise)."""
    if annotation is Any:
        return "Any"
    if annotation is None or annotation is type(None):
        return "None"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_label(args[0])
    if origin in (Union, UnionType):
        return " | ".join(type_label(arg) for arg in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else type_label(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return str(getattr(annotation, "__name__", annotation))


def _stage_output(
    name: str, index: int, item: Stage | Parallel, ops: Mapping[str, OpSpec]
) -> tuple[Stage | Parallel, StageOutput]:
    if isinstance(item, Stage):
        return _op_output(name, index, item, ops[item.op])
    pairs = [_op_output(name, index, m, ops[m.op]) for m in item.members]
    outs = [out for _, out in pairs]
    lists = variations(
        dict(enumerate(o.samples for o in outs)), set(range(len(outs))), as_list=True
    )
    defs: dict[str, Any] = {}
    for out in outs:
        defs.update(out.schema.get("$defs", {}))
    items = [{k: v for k, v in out.schema.items() if k != "$defs"} for out in outs]
    results = {"type": "array", "prefixItems": items, "minItems": len(items)}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {RESULTS_FIELD: {**results, "maxItems": len(items)}},
        "required": [RESULTS_FIELD],
        **({"$defs": defs} if defs else {}),
    }
    base = lists[0]
    output = StageOutput(
        label=f'{{"{RESULTS_FIELD}": [{", ".join(o.label for o in outs)}]}}',
        schema=schema,
        samples=[{RESULTS_FIELD: value} for value in lists],
        notes=[note for o in outs for note in o.notes],
        defaults=[
            (op, {RESULTS_FIELD: [*base[:i], value, *base[i + 1 :]]})
            for i, o in enumerate(outs)
            for op, value in o.defaults
        ],
    )
    return Parallel(tuple(s for s, _ in pairs)), output


def _op_output(name: str, index: int, item: Stage, spec: OpSpec) -> tuple[Stage, StageOutput]:
    annotation = return_annotation(spec)
    where = f"pipeline {name!r}: stage {index} ({spec.name})"
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        schema = adapter.json_schema(
            mode="serialization", by_alias=False, schema_generator=_OutputSchema
        )
    except (PydanticSchemaGenerationError, PydanticUserError) as exc:
        raise PipelineDefinitionError(
            f"{where}: pydantic cannot describe its return type {type_label(annotation)}: {exc}"
        ) from None
    notes: list[str] = []
    samples = representative_values(schema, notes)
    defaults: list[tuple[str, Any]] = []
    if item.continues:
        default = _default_as_json(where, item.default, adapter, annotation)
        item = replace(item, op=spec.name, default=default)
        defaults.append((spec.name, default))
    else:
        item = replace(item, op=spec.name)
    label = type_label(annotation)
    notes = [f"stage {index} ({spec.name}): {note}" for note in notes]
    return item, StageOutput(label, schema, samples, notes, defaults)


def _default_as_json(where: str, default: Any, adapter: TypeAdapter[Any], annotation: Any) -> Any:
    try:
        return adapter.dump_python(adapter.validate_python(default), mode="json")
    except ValidationError as exc:
        problems = "; ".join(
            f"{render_path(err['loc']) or 'value'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise PipelineDefinitionError(
            f"{where}: default {default!r} is not a valid {type_label(annotation)}, "
            f"the op's return type ({problems})"
        ) from None
    except PydanticSerializationError as exc:
        raise PipelineDefinitionError(f"{where}: default {default!r} is not JSON: {exc}") from None


def _check_link(
    name: str,
    prev: tuple[int, Stage | Parallel, StageOutput],
    nxt: tuple[int, Stage | Parallel],
    spec: OpSpec,
) -> None:
    """Refuse the pipeline when a value the previous stage may pass on (a representative value
    of its type, or a "continue" default) is not of a type the next op's payload accepts."""
    label = stage_label(prev[0], prev[1])
    candidates = [(sample, f"{label} returns {prev[2].label}") for sample in prev[2].samples]
    candidates += [
        (value, f"{label} passes {value!r} on when {op} fails (its default)")
        for op, value in prev[2].defaults
    ]
    for sample, passes in candidates:
        try:
            spec.payload_model.model_validate(sample)
        except ValidationError as exc:
            problem = _type_problem(exc, sample)
            if problem is not None:
                raise PipelineDefinitionError(
                    f"pipeline {name!r}: {_mismatch(passes, nxt[0], spec, sample, *problem)}"
                ) from None


def _type_problem(exc: ValidationError, sample: Any) -> tuple[Path, dict[str, Any]] | None:
    """The first position where `sample` has the wrong type, skipping value errors and
    unchecked places (errors of one union are grouped by position: a value that fails one
    branch only on a constraint has a type that fits)."""
    found: dict[Path, dict[str, Any]] = {}
    fitting: set[Path] = set()
    for err in exc.errors(include_url=False):
        path, unchecked = _locate(sample, err["loc"], err["type"])
        if unchecked or err["type"] in _VALUE_ERRORS:
            fitting.add(path)
        else:
            found.setdefault(path, dict(err))
    return next(((p, err) for p, err in found.items() if p not in fitting), None)


def _locate(sample: Any, loc: tuple[Any, ...], kind: str) -> tuple[Path, bool]:
    """The part of an error's `loc` that is a position in `sample` (pydantic adds union tags),
    and whether the error is about something left unchecked: inside an `UNCHECKED` value (a
    key error about the key holding it excepted), a key of an `OpenMapping`, a mapping key's
    type (`[key]`)."""
    value, path = sample, list[str | int]()
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if value is UNCHECKED or part == "[key]":
            return tuple(path), True
        if isinstance(value, OpenMapping) and kind in _KEY_ERRORS and i == last:
            return (*path, part), True
        in_dict = isinstance(value, dict) and part in value
        if in_dict or (
            isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        ):
            value = value[part]
        else:
            if kind == "missing" and i == last:
                path.append(part)
            return tuple(path), False
        path.append(part)
    return tuple(path), value is UNCHECKED and kind not in _KEY_ERRORS


def _mismatch(
    returns: str,
    next_index: int,
    spec: OpSpec,
    sample: Any,
    path: Path,
    err: dict[str, Any],
) -> str:
    needs = f"stage {next_index} ({spec.name})"
    where = f"field {render_path(path)!r}"
    if not path:
        names = list(spec.payload_model.model_fields)
        fields = ", ".join(repr(n) for n in names) or "none"
        return (
            f"{returns}, but {needs} needs an object with field{'s' * (len(names) != 1)} "
            f"{fields} as its payload ({err['msg']})"
        )
    if err["type"] == "extra_forbidden":
        return f"{returns} with {where}, which {needs} does not accept (unknown fields are refused)"
    if err["type"] == "missing":
        return f"{returns}, but {needs} needs {where}, which that output may lack"
    value = _at(sample, path)
    return f"{returns}, but {needs} needs {where} of another type: {err['msg']} (for {value!r})"


def _at(sample: Any, path: Path) -> Any:
    for part in path:
        sample = sample[part]
    return sample
