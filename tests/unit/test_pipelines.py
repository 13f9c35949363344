"""Pipeline definitions (bot/pipelines/): a pipeline whose stages fit is registered with its
schemas; every refusal names the pipeline, both stages and the field; what cannot be checked
before run time is accepted and listed; checks wait for ops registered later."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, NotRequired

import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from bot.errors import PayloadRejected, UnknownPipeline
from bot.ops import OpRegistry, OpSpec, payload_model_for
from bot.pipelines import (
    PIPELINES,
    Parallel,
    PipelineDefinitionError,
    PipelineRegistry,
    Stage,
    parallel,
    stage,
)
from bot.pipelines.samples import UNCHECKED, OpenMapping, representative_values

# --- ops for the tests (plain functions, registered in a private OpRegistry) ----------------


class Page(BaseModel):
    url: str
    size: int = 0  # a model's result is dumped whole: `size` is always passed on


class Loose(TypedDict):
    url: str
    size: NotRequired[int]


class Tagged(BaseModel):
    page: Page
    meta: Any = None
    tags: dict[str, str] = {}


def fetch(url: str) -> Page:
    return Page(url=url)


def score_int(url: str, size: int) -> int:
    return size


def score_float(url: str, size: int) -> float:
    return size / 2


def score_text(url: str, size: int) -> str:
    return url


def score_maybe(url: str, size: int) -> int | None:
    return None


def publish_ints(results: list[int]) -> dict[str, int]:
    return {"total": sum(results)}


def publish_floats(results: list[float]) -> float:
    return sum(results)


def only_url(url: str) -> int:
    return 0


def positive_size(url: str, size: Annotated[int, Field(ge=1)]) -> int:
    return size


def loose(url: str) -> Loose:
    return {"url": url}


def tagged(url: str) -> Tagged:
    return Tagged(page=Page(url=url))


def takes_tagged(page: Page, meta: int, tags: dict[str, str]) -> int:
    return 0


def takes_int_tags(page: Page, meta: int, tags: dict[str, int]) -> int:
    return 0


def takes_int_url(page: dict[str, int]) -> int:
    return 0


def only_page(page: Page, tags: dict[str, str]) -> int:
    return 0


def as_dict(url: str, size: int) -> dict[str, Any]:
    return {}


def untyped(url: str, size: int):  # type: ignore[no-untyped-def]
    return {}


def stamp(url: str) -> dict[str, datetime]:
    return {"at": datetime.now()}


class When(BaseModel):
    at: datetime


def when(url: str) -> When:
    return When(at=datetime.now())


def takes_when(at: datetime) -> str:
    return at.isoformat()


OPS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        fetch,
        score_int,
        score_float,
        score_text,
        score_maybe,
        publish_ints,
        publish_floats,
        only_url,
        positive_size,
        loose,
        tagged,
        takes_tagged,
        takes_int_tags,
        takes_int_url,
        only_page,
        as_dict,
        untyped,
        when,
        takes_when,
    )
}


def add_op(ops: OpRegistry, name: str, func: Callable[..., Any]) -> None:
    model, takes_model = payload_model_for(name, func)
    ops.add(OpSpec(name, func, model, takes_model, module=__name__))


@pytest.fixture
def ops() -> OpRegistry:
    registry = OpRegistry()
    for name, func in OPS.items():
        add_op(registry, name, func)
    return registry


@pytest.fixture
def pipes(ops: OpRegistry) -> PipelineRegistry:
    return PipelineRegistry(ops)


def refused(pipes: PipelineRegistry, *stages: Any, name: str = "report") -> str:
    with pytest.raises(PipelineDefinitionError) as raised:
        pipes.define(name, *stages)
        pipes.resolve()
    assert name not in pipes
    return str(raised.value)


# --- pipelines that fit -------------------------------------------------------------------


def test_a_pipeline_that_fits_is_registered_with_its_schemas(pipes: PipelineRegistry) -> None:
    declared = pipes.define(
        "report", "fetch", parallel("score_int", "score_float"), "publish_floats"
    )
    assert declared.task_name == "pipelines.report"
    spec = pipes.get("report")
    assert spec is pipes.get("pipelines.report") and pipes.names() == ["report"]
    assert spec.stages == (
        Stage("fetch"),
        Parallel((Stage("score_int"), Stage("score_float"))),
        Stage("publish_floats"),
    )
    assert spec.input_schema["required"] == ["url"]
    assert spec.output_schema == {"type": "number"}
    assert spec.unchecked == ()
    assert spec.describe()["stages"][1] == {
        "parallel": [
            {"op": "score_int", "on_failure": "stop"},
            {"op": "score_float", "on_failure": "stop"},
        ]
    }


def test_a_parallel_last_stage_outputs_results_in_declared_order(pipes: PipelineRegistry) -> None:
    pipes.define("scores", "fetch", parallel("score_int", "score_text"))
    results = pipes.get("scores").output_schema["properties"]["results"]
    assert [item["type"] for item in results["prefixItems"]] == ["integer", "string"]
    assert results["minItems"] == results["maxItems"] == 2


def test_a_parallel_first_stage_needs_a_payload_valid_for_each_op(pipes: PipelineRegistry) -> None:
    pipes.define("both", parallel("fetch", "only_url"))
    spec = pipes.get("both")
    assert [part["title"] for part in spec.input_schema["allOf"]] == [
        "FetchPayload",
        "OnlyUrlPayload",
    ]
    spec.validate({"url": "u"})
    with pytest.raises(PayloadRejected, match=r"pipeline 'both' \(stage 1, op 'fetch'\)"):
        spec.validate({"url": 1})


def test_continue_defaults_are_kept_as_json_of_the_ops_return_type(
    pipes: PipelineRegistry,
) -> None:
    pipes.define(
        "lenient",
        stage("fetch", on_failure="continue", default=Page(url="none")),
        parallel(stage("score_int", on_failure="continue", default="3"), "score_float"),
        "publish_floats",
    )
    first, middle, _ = pipes.get("lenient").stages
    assert isinstance(first, Stage) and first.default == {"url": "none", "size": 0}
    assert isinstance(middle, Parallel) and middle.members[0].default == 3
    assert middle.members[0].describe() == {
        "op": "score_int",
        "on_failure": "continue",
        "default": 3,
    }


def test_value_constraints_are_left_to_run_time(pipes: PipelineRegistry) -> None:
    pipes.define("sized", "fetch", "positive_size")  # size 0 fails ge=1, but int fits int
    assert pipes.get("sized").unchecked == ()


def test_formatted_strings_fit_their_own_type(pipes: PipelineRegistry) -> None:
    pipes.define("dated", "when", "takes_when")
    assert "dated" in pipes


def test_the_values_of_a_mapping_are_checked_and_its_keys_listed(pipes: PipelineRegistry) -> None:
    pipes.define("tags", "tagged", "takes_tagged")
    assert pipes.get("tags").unchecked == (
        "stage 1 (tagged): field 'meta' is Any, not checked against stage 2 (takes_tagged)",
        "stage 1 (tagged): field 'tags' is a mapping whose keys are known only at run time,"
        " not checked against stage 2 (takes_tagged)",
    )


def test_untyped_outputs_are_accepted_listed_and_logged(
    pipes: PipelineRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.pipelines")
    pipes.define("loose_ends", "fetch", "as_dict", "fetch", "untyped", "fetch")
    assert pipes.get("loose_ends").unchecked == (
        "stage 2 (as_dict): the whole output is a mapping whose keys are known only at run"
        " time, not checked against stage 3 (fetch)",
        "stage 4 (untyped): the whole output is Any, not checked against stage 5 (fetch)",
    )
    assert "stage 4 (untyped): the whole output is Any" in caplog.text


def test_the_same_definition_again_is_the_same_pipeline(pipes: PipelineRegistry) -> None:
    first = pipes.define("report", "fetch", "score_int", module="m")
    assert pipes.define("report", "fetch", "score_int", module="m") is first


# --- refusals: each names the pipeline, both stages and the field -------------------------


def test_refused_a_scalar_output_where_the_next_stage_needs_results(
    pipes: PipelineRegistry,
) -> None:
    message = refused(pipes, "fetch", "score_int", "publish_ints")
    assert message == (
        "pipeline 'report': stage 2 (score_int) returns int, but stage 3 (publish_ints) needs"
        " an object with field 'results' as its payload (Input should be a valid dictionary or"
        " instance of PublishIntsPayload)"
    )


def test_refused_a_parallel_member_of_the_wrong_type(pipes: PipelineRegistry) -> None:
    message = refused(pipes, "fetch", parallel("score_int", "score_float"), "publish_ints")
    assert message.startswith(
        "pipeline 'report': stage 2 (parallel: score_int, score_float) returns"
        " {\"results\": [int, float]}, but stage 3 (publish_ints) needs field 'results[1]'"
    )
    assert "Input should be a valid integer, got a number with a fractional part" in message


def test_refused_text_where_a_number_is_needed(pipes: PipelineRegistry) -> None:
    message = refused(pipes, "fetch", parallel("score_text", "score_int"), "publish_floats")
    assert "stage 2 (parallel: score_text, score_int)" in message
    assert "stage 3 (publish_floats) needs field 'results[0]'" in message


def test_refused_an_output_that_may_be_null(pipes: PipelineRegistry) -> None:
    message = refused(pipes, "fetch", parallel("score_maybe", "score_int"), "publish_ints")
    assert 'returns {"results": [int | None, int]}' in message
    assert "stage 3 (publish_ints) needs field 'results[0]'" in message
    assert "(for None)" in message


def test_refused_a_field_the_next_stage_does_not_accept(pipes: PipelineRegistry) -> None:
    assert refused(pipes, "fetch", "only_url") == (
        "pipeline 'report': stage 1 (fetch) returns Page with field 'size', which stage 2"
        " (only_url) does not accept (unknown fields are refused)"
    )


def test_refused_an_unchecked_field_the_next_stage_does_not_accept(
    pipes: PipelineRegistry,
) -> None:
    assert refused(pipes, "tagged", "only_page") == (
        "pipeline 'report': stage 1 (tagged) returns Tagged with field 'meta', which stage 2"
        " (only_page) does not accept (unknown fields are refused)"
    )


def test_refused_a_field_the_output_may_lack(pipes: PipelineRegistry) -> None:
    assert refused(pipes, "loose", "score_int") == (
        "pipeline 'report': stage 1 (loose) returns Loose, but stage 2 (score_int) needs"
        " field 'size', which that output may lack"
    )


def test_refused_a_nested_field_of_the_wrong_type(pipes: PipelineRegistry) -> None:
    message = refused(pipes, "tagged", "takes_int_tags")
    assert message.startswith(
        "pipeline 'report': stage 1 (tagged) returns Tagged, but stage 2 (takes_int_tags)"
        " needs field 'tags.<key>' of another type: Input should be a valid integer"
    )
    assert "needs field 'page'" in refused(pipes, "fetch", "takes_int_url", name="url_ints")


def test_refused_a_scalar_first_output_naming_the_needed_fields(pipes: PipelineRegistry) -> None:
    message = refused(pipes, "only_url", "fetch")
    assert "stage 1 (only_url) returns int, but stage 2 (fetch) needs an object with" in message
    assert "field 'url'" in message


def test_refused_a_default_that_is_not_the_ops_return_type(pipes: PipelineRegistry) -> None:
    message = refused(
        pipes,
        "fetch",
        parallel(stage("score_int", on_failure="continue", default="many"), "score_float"),
        "publish_floats",
    )
    assert message.startswith(
        "pipeline 'report': stage 2 (score_int): default 'many' is not a valid int, the op's"
        " return type"
    )


def test_refused_a_default_that_does_not_fit_the_next_stage(pipes: PipelineRegistry) -> None:
    message = refused(pipes, "fetch", stage("as_dict", on_failure="continue", default={}), "fetch")
    assert message == (
        "pipeline 'report': stage 2 (as_dict) passes {} on when as_dict fails (its default),"
        " but stage 3 (fetch) needs field 'url', which that output may lack"
    )
    message = refused(
        pipes,
        "fetch",
        parallel("score_int", stage("untyped", on_failure="continue", default={"n": 1})),
        "publish_ints",
    )
    assert message.startswith(
        "pipeline 'report': stage 2 (parallel: score_int, untyped) passes {'results': [0,"
        " {'n': 1}]} on when untyped fails (its default), but stage 3 (publish_ints) needs"
        " field 'results[1]' of another type"
    )


def test_refused_a_default_that_is_not_json(pipes: PipelineRegistry) -> None:
    message = refused(pipes, "fetch", stage("untyped", on_failure="continue", default=object()))
    assert "stage 2 (untyped): default <object object" in message and "is not JSON" in message


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (stage("score_int", on_failure="continue"), "stage 2 (score_int): on_failure='continue'"),
        (stage("score_int", default=1), "stage 2 (score_int): a default is used only with"),
        (stage("score_int", on_failure="retry"), "stage 2 (score_int): on_failure must be"),  # type: ignore[arg-type]
        (parallel("score_int"), "stage 2 (parallel: score_int) has 1 op; a parallel stage"),
        (parallel(), "stage 2 (parallel: ) has 0 op"),
        (
            Parallel((Stage("score_int"), parallel("a", "b"))),  # type: ignore[arg-type]
            "stage 2 (parallel) holds 'parallel stage [a, b]'",
        ),
        (
            parallel("score_int", stage("score_float", default=2.0)),
            "stage 2 (parallel) (score_float): a default is used only with",
        ),
        (42, "stage 2 is 42; a stage is an op name, stage(...) or parallel(...)"),
        (stage(""), "stage 2: the op must be named by a string"),
    ],
)
def test_refused_a_stage_of_a_bad_shape(pipes: PipelineRegistry, item: Any, expected: str) -> None:
    assert expected in refused(pipes, "fetch", item)


def test_refused_an_empty_pipeline_and_a_bad_name(pipes: PipelineRegistry) -> None:
    assert refused(pipes) == "pipeline 'report' has no stages"
    assert "pipeline name 'Report!' is not valid" in refused(pipes, "fetch", name="Report!")


def test_refused_a_second_pipeline_of_the_same_name(pipes: PipelineRegistry) -> None:
    pipes.define("report", "fetch", "score_int", module="tasks.a")
    with pytest.raises(PipelineDefinitionError) as raised:
        pipes.define("report", "fetch", module="tasks.b")
    assert str(raised.value) == (
        "pipeline 'report' is already defined (in tasks.a); a second definition (in tasks.b)"
        " is refused"
    )
    assert pipes.get("report").declared.module == "tasks.a"


def test_refused_an_op_still_unknown_when_discovery_ends(pipes: PipelineRegistry) -> None:
    pipes.define("report", "fetch", parallel("score_int", "nope"), "publish_ints")
    with pytest.raises(PipelineDefinitionError, match=r"is not checked yet"):
        pipes.get("report")
    with pytest.raises(PipelineDefinitionError) as raised:
        pipes.resolve()
    assert str(raised.value).startswith(
        "pipeline 'report': stage 2 names op 'nope', which is not registered (known: as_dict,"
    )
    with pytest.raises(UnknownPipeline, match=r"unknown pipeline 'report' \(known: none\)"):
        pipes.get("report")


# --- when the check happens ---------------------------------------------------------------


def test_a_pipeline_naming_a_later_op_is_checked_when_discovery_ends(
    ops: OpRegistry, pipes: PipelineRegistry
) -> None:
    pipes.define("later", "fetch", "score_later")
    assert pipes.pending() == ["later"] and "later" not in pipes
    add_op(ops, "score_later", score_float)
    pipes.resolve()
    assert pipes.pending() == [] and pipes.get("later").ops["score_later"].func is score_float


def test_a_pipeline_naming_a_later_op_that_does_not_fit_is_refused_at_the_end(
    ops: OpRegistry, pipes: PipelineRegistry
) -> None:
    pipes.define("later", "fetch", "publish_later")
    add_op(ops, "publish_later", publish_ints)
    with pytest.raises(
        PipelineDefinitionError,
        match=r"returns Page, but stage 2 \(publish_later\) needs field 'results'",
    ):
        pipes.resolve()


# --- the example pipeline of tasks/ -------------------------------------------------------


def test_the_example_pipeline_is_registered_and_validates_its_payload() -> None:
    import bot  # noqa: F401  (discovery: tasks/squares.py)

    spec = PIPELINES.get("difference_of_squares")
    assert [item.label() for item in spec.stages] == ["scale", "[sum, subtract]", "product"]
    assert spec.task_name == "pipelines.difference_of_squares"
    assert spec.declared.module == "tasks.squares" and spec.unchecked == ()
    spec.validate({"a": 5, "b": 3})
    with pytest.raises(PayloadRejected) as raised:
        spec.validate({"a": "x", "b": 3, "c": 1})
    assert {tuple(e["loc"]) for e in raised.value.errors} == {("a",), ("c",)}


def test_the_example_ops_compute_a_difference_of_squares() -> None:
    import bot  # noqa: F401

    spec = PIPELINES.get("difference_of_squares")
    scale, product = spec.ops["scale"], spec.ops["product"]
    operands = scale.call(scale.validate({"a": 5, "b": 3, "factor": 2}))
    parts = [spec.ops[op].call(spec.ops[op].validate(operands)) for op in ("sum", "subtract")]
    assert product.call(product.validate({"results": parts})) == 100 - 36


# --- representative values ----------------------------------------------------------------


def test_representative_values_cover_each_shape_once() -> None:
    notes: list[str] = []
    schema = {
        "type": "object",
        "properties": {
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "pair": {"type": "array", "prefixItems": [{"type": "number"}, {}]},
            "kind": {"enum": ["a", "b"]},
        },
        "required": ["n", "pair"],
    }
    values = representative_values(schema, notes)
    assert values[0] == {"n": 0, "pair": [0.5, UNCHECKED]}
    assert {"n": None, "pair": [0.5, UNCHECKED]} in values
    assert {"n": 0, "pair": [0.5, UNCHECKED], "kind": "b"} in values
    tags = next(v["tags"] for v in values if "tags" in v)
    assert isinstance(tags, OpenMapping) and tags == {"<key>": "text"}
    assert notes == [
        "field 'tags' is a mapping whose keys are known only at run time",
        "field 'pair[1]' is Any",
    ]


def test_representative_values_stop_at_recursion() -> None:
    notes: list[str] = []
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                "required": ["kids"],
            }
        },
        "$ref": "#/$defs/Node",
    }
    assert representative_values(schema, notes)[0] == {"kids": []}
    assert any("nested deeper than" in note for note in notes)
