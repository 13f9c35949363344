"""Representative values of a JSON Schema: the few JSON values an op's output may take, one of
each shape, used to check that it fits the next stage's payload model.

Each primitive type gives values that tell the types apart when pydantic validates them
(integer 0 and 7, number 0.5, "text" or a value of the string's `format`, true and false,
null); a union gives its branches' values; an object gives one value with its required
fields plus one per variation of a field (each field's other values; each optional field
present); an array gives `[]` and one single-item list per item value. Value constraints
(ranges, lengths, patterns) are ignored: the check is about types.

What has no known shape until run time becomes `UNCHECKED`: `Any` (the empty schema), an
unresolvable or too deep reference. A mapping whose keys are not declared (`dict[str, X]`)
becomes an `OpenMapping` of X's values under a stand-in key: its values are checked, its keys
are not. Each such place is noted, so a pipeline can say what was not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Schema keys that describe a value without constraining it.
_ANNOTATIONS = {"title", "description", "default", "examples", "deprecated", "$comment"}
_ANNOTATIONS |= {"readOnly", "writeOnly"}
#: How deep references and nested values are followed (recursive models end here).
MAX_DEPTH = 8
#: One value per string `format` pydantic emits, so a datetime output fits a datetime input.
_FORMATS: dict[str, str] = {
    "date-time": "2024-01-02T03:04:05Z",
    "date": "2024-01-02",
    "time": "03:04:05",
    "duration": "PT1S",
    "uuid": "12345678-1234-5678-1234-567812345678",
    "email": "someone@example.com",
    "uri": "https://example.com/",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "path": "/tmp",
}
_PRIMITIVES: dict[str, list[Any]] = {
    "integer": [0, 7],
    "number": [0.5],
    "boolean": [True, False],
    "null": [None],
}


class _Unchecked:
    """A value whose shape is known only at run time; validation errors about it are ignored."""

    def __repr__(self) -> str:
        return "<unchecked>"


UNCHECKED: Any = _Unchecked()


class OpenMapping(dict[str, Any]):
    """A value of `dict[str, X]`: its keys are known only at run time, so a key the next
    payload model misses or refuses is not an error; its values (under `ANY_KEY`) are checked."""


#: The stand-in key of an `OpenMapping`.
ANY_KEY = "<key>"

Path = tuple[str | int, ...]


def render_path(path: Sequence[str | int]) -> str:
    """`('results', 1)` -> `results[1]`, `('page', 'url')` -> `page.url`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def representative_values(schema: dict[str, Any], notes: list[str]) -> list[Any]:
    """A few JSON values of `schema` (at least one); appends to `notes` each place left
    unchecked, e.g. "field 'meta' is Any"."""
    return _Sampler(schema.get("$defs", {}), notes).values(schema, (), 0)


class _Sampler:
    def __init__(self, defs: dict[str, Any], notes: list[str]) -> None:
        self.defs = defs
        self.notes = notes

    def unchecked(self, path: Path, why: str) -> list[Any]:
        where = f"field {render_path(path)!r}" if path else "the whole output"
        note = f"{where} {why}"
        if note not in self.notes:
            self.notes.append(note)
        return [UNCHECKED]

    def values(self, schema: Any, path: Path, depth: int) -> list[Any]:
        if not isinstance(schema, dict) or not set(schema) - _ANNOTATIONS:
            return self.unchecked(path, "is Any")
        if depth > MAX_DEPTH:
            return self.unchecked(path, f"is nested deeper than {MAX_DEPTH} levels")
        if "$ref" in schema:
            target = self.defs.get(str(schema["$ref"]).rsplit("/", 1)[-1])
            if target is None:
                return self.unchecked(path, f"refers to {schema['$ref']}, which is not defined")
            return self.values(target, path, depth + 1)
        if "const" in schema:
            return [schema["const"]]
        if "enum" in schema:
            return list(schema["enum"])
        branches = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
        if branches is not None:
            if "allOf" in schema and len(branches) != 1:
                return self.unchecked(path, "is an intersection (allOf)")
            return _unique([v for branch in branches for v in self.values(branch, path, depth)])
        kind = schema.get("type")
        if isinstance(kind, list):
            return _unique(
                [v for one in kind for v in self.values({**schema, "type": one}, path, depth)]
            )
        return self.typed(kind, schema, path, depth)

    def typed(self, kind: Any, schema: dict[str, Any], path: Path, depth: int) -> list[Any]:
        if kind in _PRIMITIVES:
            return list(_PRIMITIVES[kind])
        if kind == "string":
            return [_FORMATS.get(str(schema.get("format")), "text")]
        if kind == "array":
            return self.array(schema, path, depth)
        if kind == "object":
            if "properties" not in schema:
                return self.mapping(schema, path, depth)
            return self.object(schema, path, depth)
        return self.unchecked(path, f"has a schema bot cannot sample ({schema})")

    def array(self, schema: dict[str, Any], path: Path, depth: int) -> list[Any]:
        if "prefixItems" in schema:  # a tuple: one value per position, each varied in turn
            options = [
                self.values(item, (*path, i), depth + 1)
                for i, item in enumerate(schema["prefixItems"])
            ]
            return variations(dict(enumerate(options)), set(range(len(options))), as_list=True)
        items = self.values(schema.get("items", {}), (*path, 0), depth + 1)
        return [[], *([item] for item in items)]

    def mapping(self, schema: dict[str, Any], path: Path, depth: int) -> list[Any]:
        """`dict[str, X]`: one `OpenMapping` per value of X under the stand-in key `<key>`."""
        self.unchecked(path, "is a mapping whose keys are known only at run time")
        values = schema.get("additionalProperties", True)
        if values is True or values == {}:
            return [OpenMapping({ANY_KEY: UNCHECKED})]
        return [OpenMapping({ANY_KEY: v}) for v in self.values(values, (*path, ANY_KEY), depth + 1)]

    def object(self, schema: dict[str, Any], path: Path, depth: int) -> list[Any]:
        options = {
            key: self.values(sub, (*path, key), depth + 1)
            for key, sub in schema["properties"].items()
        }
        return variations(options, set(schema.get("required", [])), as_list=False)


def variations(options: dict[Any, list[Any]], required: set[Any], *, as_list: bool) -> list[Any]:
    """A base value (each required position's first value), then one value per other value of
    a required position and per value of an optional one: linear in the number of leaves."""
    base = {key: values[0] for key, values in options.items() if key in required}
    out: list[dict[Any, Any]] = [base]
    for key, values in options.items():
        for value in values[1:] if key in required else values:
            out.append({**base, key: value})
    return [list(value.values()) for value in out] if as_list else list(out)


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not any(value is seen or (type(value) is type(seen) and value == seen) for seen in out):
            out.append(value)
    return out
