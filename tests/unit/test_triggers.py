"""Trigger definitions (bot/pipelines/triggers.py): what `on` accepts and refuses at declaration,
the deferred check at the end of discovery, matching, and the ids of the jobs a trigger starts
(bot/flows/triggers.py: `trigger_job_id`)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import Report, on
from bot.base.exits import EXIT_USAGE
from bot.fleet.services import Disabled, FleetContext, trigger_service
from bot.flows.run_record import MAX_RUN_ID_LENGTH
from bot.flows.triggers import trigger_job_id
from bot.jobs.envelope import job_id_problem
from bot.jobs.reports import FINAL_STATES
from bot.ops import OpRegistry, OpSpec, payload_model_for
from bot.pipelines.registry import PipelineRegistry
from bot.pipelines.triggers import (
    FINAL_STATUSES,
    TRIGGERS,
    Target,
    Trigger,
    TriggerDefinitionError,
    TriggerRegistry,
)
from config.settings import ConfigError, Settings, load_settings
from tests.support.processes import REPO_ROOT, run_to_end
from tests.unit.test_pipeline_discovery import env_with

SUM, SUBTRACT = Target("op", "sum"), Target("op", "subtract")


def add_op(ops: OpRegistry, name: str, func: Any) -> None:
    model, takes_model = payload_model_for(name, func)
    ops.add(OpSpec(name, func, model, takes_model, module=__name__))


def early(a: int) -> int:
    return a


def needs_field(needed: int) -> int:
    return needed


@pytest.fixture
def forget() -> Iterator[list[str]]:
    """Names of triggers a test declared in the process-wide registry, removed after it."""
    names: list[str] = []
    yield names
    for name in names:
        TRIGGERS.remove(name)


def test_the_statuses_are_the_final_states_of_a_report() -> None:
    assert FINAL_STATUSES == FINAL_STATES


def test_a_decorated_function_is_a_trigger_named_after_it(forget: list[str]) -> None:
    def on_sum(report: Report) -> dict[str, Any]:
        return {"a": report.result, "b": 1}

    assert on(("succeeded", "dead"), op="sum", submit="subtract")(on_sum) is on_sum
    name = f"{__name__}.test_a_decorated_function_is_a_trigger_named_after_it.on_sum"
    forget.append(name)

    trigger = TRIGGERS.get(name)
    assert (trigger.statuses, trigger.source, trigger.target) == (
        ("succeeded", "dead"),
        SUM,
        SUBTRACT,
    )
    assert trigger.matches("sum", "succeeded") and trigger.matches("sum", "dead")
    assert not trigger.matches("sum", "failed") and not trigger.matches("subtract", "succeeded")
    assert TRIGGERS.matching("sum", "dead") == [trigger]
    assert trigger.describe()["function"] == f"{__name__}.{on_sum.__qualname__}"


def test_a_static_trigger_sends_its_payload_and_a_pipeline_is_matched_by_its_task_name(
    forget: list[str],
) -> None:
    trigger = on("failed", pipeline="difference_of_squares", submit="sum", payload={"a": 1, "b": 2})
    forget.append(trigger.name)

    assert trigger.name == f"{__name__}.difference_of_squares.failed.sum"
    assert trigger.matches("pipelines.difference_of_squares", "failed")
    assert not trigger.matches("difference_of_squares", "failed")
    assert trigger.payload_for(None) == {"a": 1, "b": 2}


def test_declaring_the_same_trigger_again_is_harmless_but_another_of_that_name_is_refused(
    forget: list[str],
) -> None:
    first = on("succeeded", op="sum", submit="subtract", payload={"a": 1, "b": 1}, name="t.x")
    forget.append("t.x")

    again = on("succeeded", op="sum", submit="subtract", payload={"a": 1, "b": 1}, name="t.x")

    assert again is first
    with pytest.raises(TriggerDefinitionError, match=r"'t\.x' is already defined"):
        on("failed", op="sum", submit="subtract", payload={"a": 1, "b": 1}, name="t.x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"op": "sum", "submit": "sum", "status": "done"}, "each must be one of succeeded"),
        ({"op": "sum", "submit": "sum", "status": ()}, "each must be one of"),
        ({"submit": "sum"}, "exactly one of op= .* and pipeline="),
        ({"op": "sum", "pipeline": "p", "submit": "sum"}, "exactly one of op="),
        ({"op": "sum"}, "exactly one of submit= .* and start="),
        ({"op": "sum", "submit": "sum", "start": "p"}, "exactly one of submit="),
        ({"op": "sum", "submit": "subtract", "name": "has space"}, "must match"),
        ({"op": "sum", "submit": "subtract", "payload": {"a": "x"}}, "field b|b: "),
        ({"op": "sum", "submit": "sum", "payload": {"a": 1, "b": 1}}, "never stop"),
        ({"op": "nosuch", "submit": "sum", "payload": {}}, None),
    ],
)
def test_a_bad_trigger_is_refused_at_declaration(
    kwargs: dict[str, Any], message: str | None
) -> None:
    status = kwargs.pop("status", "succeeded")
    if message is None:  # an unknown op waits for the end of discovery instead
        trigger = on(status, **kwargs)
        assert trigger.name in TRIGGERS.pending() and trigger.name not in TRIGGERS
        TRIGGERS.remove(trigger.name)
        return
    with pytest.raises(TriggerDefinitionError, match=message):
        declared = on(status, **kwargs)
        if not isinstance(declared, Trigger):
            declared(lambda report: None)


def test_a_trigger_function_must_take_the_report() -> None:
    with pytest.raises(TriggerDefinitionError, match="must take one argument"):
        on("succeeded", op="sum", submit="subtract")(lambda: None)


def test_a_trigger_naming_an_op_registered_later_is_checked_when_discovery_ends() -> None:
    ops = OpRegistry()
    pipelines = PipelineRegistry(ops)
    triggers = TriggerRegistry(ops, pipelines)
    late = Trigger("t.late", ("succeeded",), Target("op", "early"), Target("op", "late"))
    add_op(ops, "early", early)

    triggers.define(late)
    assert triggers.pending() == ["t.late"] and "t.late" not in triggers

    add_op(ops, "late", early)
    triggers.resolve()
    assert triggers.names() == ["t.late"] and triggers.pending() == []


def test_a_static_payload_is_checked_against_a_target_registered_later() -> None:
    ops = OpRegistry()
    triggers = TriggerRegistry(ops, PipelineRegistry(ops))
    add_op(ops, "source", early)

    triggers.define(
        Trigger("t.bad", ("failed",), Target("op", "source"), Target("op", "sink"), None, {})
    )

    add_op(ops, "sink", needs_field)
    with pytest.raises(TriggerDefinitionError, match=r"not valid for op 'sink'.*needed"):
        triggers.resolve()
    assert "t.bad" not in triggers


def test_the_id_of_a_triggered_job_is_the_trigger_and_the_reports_job_id() -> None:
    assert trigger_job_id("app.notify", "job-1") == "trg.app.notify.job-1"
    assert trigger_job_id("app.notify", "job-1") != trigger_job_id("app.other", "job-1")


@pytest.mark.parametrize(
    ("job_id", "limit"),
    [("j" * 200, 200), ("j" * 170, MAX_RUN_ID_LENGTH), ("bad id\r\n", 200)],
)
def test_a_long_or_odd_job_id_gives_a_hashed_id_that_is_still_a_job_id(
    job_id: str, limit: int
) -> None:
    derived = trigger_job_id("app.notify", job_id, limit)

    assert len(derived) <= limit and job_id_problem(derived) is None
    assert re.fullmatch(r"trgh\.[0-9a-f]{40}\.app\.notify", derived)
    assert derived == trigger_job_id("app.notify", job_id, limit)
    assert derived != trigger_job_id("app.notify", job_id + "x", limit)


#: A trigger on the reports of `late_op`, an op of a module discovered after this one.
EARLY_TRIGGER = """
from bot import on

@on("succeeded", op="late_op", submit="sum")
def after_late(report):
    return {"a": report.result, "b": 0}
"""
LATE_OP = """
from bot.ops import op

@op("late_op")
def late_op(a: float) -> float:
    return a
"""


def test_a_trigger_on_an_op_of_a_later_module_is_listed_and_an_unknown_one_stops_start_up(
    tmp_path: Path,
) -> None:
    env = env_with(tmp_path, {"early_trigger": EARLY_TRIGGER, "late_ops": LATE_OP})

    listed = run_to_end(
        [sys.executable, "-m", "bot", "triggers", "--json"],
        {**env, "BOT_OPS_MODULES": "early_trigger,late_ops"},
        REPO_ROOT,
        60,
    )
    alone = run_to_end(
        [sys.executable, "-m", "bot", "triggers"],
        {**env, "BOT_OPS_MODULES": "early_trigger"},
        REPO_ROOT,
        60,
    )

    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {
            "name": "early_trigger.after_late",
            "on": ["succeeded"],
            "source": {"kind": "op", "name": "late_op"},
            "target": {"kind": "op", "name": "sum"},
            "function": "early_trigger.after_late",
            "payload": None,
            "module": "early_trigger",
        }
    ]
    assert (alone.returncode, alone.stdout) == (EXIT_USAGE, "")
    assert alone.stderr.startswith(
        "bot: invalid configuration: trigger 'early_trigger.after_late': op 'late_op' is not"
        " registered (known: "
    )
    assert alone.stderr.rstrip().endswith("(declared in early_trigger)")


def test_the_worker_runs_no_trigger_consumer_when_bot_triggers_is_off() -> None:
    context = FleetContext(
        app=None,
        settings=Settings(triggers=False),
        identity=None,  # type: ignore[arg-type]
        lifecycle=None,  # type: ignore[arg-type]
        breakers={},
    )

    service = trigger_service(context)

    assert isinstance(service, Disabled) and service.why == "BOT_TRIGGERS is off"


def test_a_claim_idle_that_is_not_positive_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TRIGGER_CLAIM_IDLE", "0")

    with pytest.raises(ConfigError, match="BOT_TRIGGER_CLAIM_IDLE: Input should be greater than 0"):
        load_settings()
