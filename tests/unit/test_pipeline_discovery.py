"""Pipelines are discovered with the ops (tasks/, BOT_OPS_MODULES, entry points), checked at
import or when discovery ends, and listed by `bot pipelines`. The discovery tests run in fresh
interpreters: discovery fills process-wide registries, once."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from bot.base.exits import EXIT_USAGE
from bot.cli import main
from tests.support.processes import REPO_ROOT, run_python, run_to_end

#: Declares a pipeline naming `late_op`, an op of a module discovered after this one.
EARLY = """
from bot.pipelines import parallel, pipeline

pipeline("late_flow", "scale", parallel("late_op", "sum"), description="Waits for late_op.")
"""

LATE = """
from typing import Any

from bot.ops import op
from bot.pipelines import pipeline, stage


@op("late_op")
def late_op(a: float, b: float) -> dict[str, Any]:
    return {"a": a, "b": b}


pipeline("loose_flow", stage("late_op", on_failure="continue", default={"a": 0, "b": 0}), "sum")
"""

#: `sum` returns a number; `scale` needs an object {a, b, factor?}.
BAD = """
from bot.pipelines import pipeline

pipeline("bad_flow", "sum", "scale")
"""


def env_with(tmp_path: Path, modules: dict[str, str], ops_modules: str = "") -> dict[str, str]:
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(tmp_path)])
    env["BOT_STATE_DIR"] = str(tmp_path / "state")
    if ops_modules:
        env["BOT_OPS_MODULES"] = ops_modules
    return env


def bot_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = run_to_end([sys.executable, "-m", "bot", *args], env, REPO_ROOT, 60)
    return done.returncode, done.stdout, done.stderr


def test_a_pipeline_naming_an_op_of_a_later_module_is_checked_when_discovery_ends(
    tmp_path: Path,
) -> None:
    env = env_with(tmp_path, {"early_flow": EARLY, "late_ops": LATE}, "early_flow,late_ops")
    code, out, err = bot_cli(env, "pipelines", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert set(listed) == {"difference_of_squares", "late_flow", "loose_flow"}
    late = listed["late_flow"]
    assert late["task"] == "pipelines.late_flow" and late["module"] == "early_flow"
    assert late["stages"] == [
        {"op": "scale", "on_failure": "stop"},
        {
            "parallel": [
                {"op": "late_op", "on_failure": "stop"},
                {"op": "sum", "on_failure": "stop"},
            ]
        },
    ]
    assert late["input_schema"]["title"] == "ScalePayload" and late["unchecked"] == []
    assert listed["loose_flow"]["stages"][0]["default"] == {"a": 0, "b": 0}

    code, out, err = bot_cli(env, "pipelines")
    assert code == 0, err
    lines = out.splitlines()
    assert any(
        line.startswith("late_flow ") and line.endswith("scale -> [late_op, sum]") for line in lines
    ), out
    assert any(line.endswith("late_op (continue: {'a': 0, 'b': 0}) -> sum") for line in lines), out
    assert (
        "not checked: stage 1 (late_op): the whole output is a mapping whose keys are known"
        " only at run time, not checked against stage 2 (sum)"
    ) in out


def test_a_pipeline_that_does_not_fit_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = env_with(tmp_path, {"bad_flow": BAD}, "bad_flow")
    for args in (["pipelines"], ["ops"]):
        code, out, err = bot_cli(env, *args)
        assert code == EXIT_USAGE and out == ""
        assert err.splitlines() == [
            "bot: invalid configuration: pipeline 'bad_flow': stage 1 (sum) returns"
            " int | float, but stage 2 (scale) needs an object with fields 'a', 'b', 'factor'"
            " as its payload (Input should be a valid dictionary or instance of ScalePayload)"
            " (declared in bad_flow)"
        ]


def test_an_op_unknown_when_discovery_ends_stops_start_up(tmp_path: Path) -> None:
    env = env_with(tmp_path, {"early_flow": EARLY}, "early_flow")
    code, _, err = bot_cli(env, "pipelines")
    assert code == EXIT_USAGE
    assert err.startswith(
        "bot: invalid configuration: pipeline 'late_flow': stage 2 names op 'late_op', which is"
        " not registered (known: "
    )
    assert err.rstrip().endswith("(declared in early_flow)")


def test_importing_a_module_with_a_bad_pipeline_raises_the_definition_error(
    tmp_path: Path,
) -> None:
    env = env_with(tmp_path, {"bad_flow": BAD})
    done = run_python("import bad_flow", env)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(
        "bot.pipelines.stages.PipelineDefinitionError: pipeline 'bad_flow': stage 1 (sum)"
        " returns int | float, but stage 2 (scale) needs an object with fields"
    )
    assert 'bad_flow.py", line 4, in <module>' in done.stderr  # the pipeline(...) line


def test_bot_pipelines_lists_the_example_pipeline() -> None:
    result = CliRunner().invoke(main, ["pipelines"])
    assert result.exit_code == 0, result.output
    # (test-only pipelines may be registered too, by tests run earlier in this process)
    assert (
        "difference_of_squares    a:number b:number factor?:number         "
        "scale -> [sum, subtract] -> product"
    ) in result.output.splitlines()


def test_bot_pipelines_json_has_each_stages_op_and_the_input_schema() -> None:
    result = CliRunner().invoke(main, ["pipelines", "--json"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.output)["difference_of_squares"]
    assert spec["task"] == "pipelines.difference_of_squares"
    assert [
        stage.get("op") or [m["op"] for m in stage["parallel"]] for stage in spec["stages"]
    ] == [
        "scale",
        ["sum", "subtract"],
        "product",
    ]
    assert spec["input_schema"]["required"] == ["a", "b"]
    assert set(spec["input_schema"]["properties"]) == {"a", "b", "factor"}
    assert spec["output_schema"] == {"anyOf": [{"type": "integer"}, {"type": "number"}]}
