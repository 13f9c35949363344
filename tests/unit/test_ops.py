"""The @op decorator: payload models from signatures, field-level rejection, registry."""

import pytest
from pydantic import BaseModel

from bot.errors import PayloadRejected, UnknownOp
from bot.ops import REGISTRY, OpRegistry, OpSpec, op, payload_model_for


def test_builtin_ops_are_registered_as_ops_tasks() -> None:
    import bot

    assert {"sum", "subtract", "sleep", "flaky"} <= set(REGISTRY.names())
    assert {"ops.sum", "ops.subtract", "ops.sleep", "ops.flaky"} <= set(bot.app.tasks)


def test_sum_keeps_integers_integral() -> None:
    spec = REGISTRY.get("sum")
    assert spec.call(spec.validate({"a": 1, "b": 2})) == 3
    assert isinstance(spec.call(spec.validate({"a": 1, "b": 2})), int)
    assert spec.call(spec.validate({"a": 1.5, "b": 2})) == 3.5
    assert (
        REGISTRY.get("ops.subtract").call(REGISTRY.get("subtract").validate({"a": 5, "b": 7})) == -2
    )


def test_bad_payload_is_rejected_with_field_errors() -> None:
    spec = REGISTRY.get("sum")
    with pytest.raises(PayloadRejected) as raised:
        spec.validate({"a": "x", "c": 1})
    fields = {tuple(error["loc"]) for error in raised.value.errors}
    assert fields == {("a",), ("b",), ("c",)}  # bad, missing, and not allowed
    assert "a: Input should be a valid number" in str(raised.value)


def test_non_finite_numbers_are_rejected() -> None:
    with pytest.raises(PayloadRejected):
        REGISTRY.get("sum").validate({"a": float("inf"), "b": 1})


def test_unknown_op_names_the_known_ones() -> None:
    with pytest.raises(UnknownOp, match=r"unknown op 'nope' .*sum"):
        REGISTRY.get("nope")


def test_model_taking_op_uses_its_model() -> None:
    class Payload(BaseModel):
        n: int

    def double(payload: Payload) -> dict[str, int]:
        return {"n": payload.n * 2}

    model, takes_model = payload_model_for("double", double)
    assert model is Payload and takes_model
    spec = OpSpec("double", double, model, takes_model)
    assert spec.call(spec.validate({"n": "4"})) == {"n": 8}


def test_pydantic_results_are_dumped_to_json() -> None:
    class Out(BaseModel):
        total: int

    def make(n: int) -> Out:
        return Out(total=n)

    model, takes_model = payload_model_for("make", make)
    assert OpSpec("make", make, model, takes_model).call(model(n=3)) == {"total": 3}


def test_untyped_or_variadic_parameters_are_refused() -> None:
    def untyped(a):  # type: ignore[no-untyped-def]
        return a

    def variadic(**kwargs: int) -> int:
        return 0

    with pytest.raises(TypeError, match="needs a type annotation"):
        payload_model_for("untyped", untyped)
    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):
        payload_model_for("variadic", variadic)


def test_registry_refuses_a_second_op_of_the_same_name() -> None:
    registry = OpRegistry()

    def one(a: int) -> int:
        return a

    def two(a: int) -> int:
        return a

    model, _ = payload_model_for("x", one)
    registry.add(OpSpec("x", one, model, False, module="m1"))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(OpSpec("x", two, model, False, module="m2"))


def test_op_names_are_checked() -> None:
    with pytest.raises(ValueError, match="must match"):
        op("Bad Name")


def test_schema_is_json_schema_of_the_payload() -> None:
    schema = REGISTRY.get("sleep").schema()
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"seconds", "steps"}
    assert schema["required"] == ["seconds"]


def test_payload_over_the_size_limit_is_rejected() -> None:
    from bot.ops import check_size

    check_size({"a": "x" * 10}, 100)
    with pytest.raises(PayloadRejected, match="over BOT_MAX_PAYLOAD_BYTES"):
        check_size({"a": "x" * 200}, 100)
