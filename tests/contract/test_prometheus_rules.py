"""The Prometheus rules of deploy/prometheus/ are valid (`promtool check rules`), pass their unit
tests (`promtool test rules deploy/prometheus/tests/*.yml`), and every alert has a test that
fires it and one that keeps it quiet, a severity, a summary, a description, and a runbook that
is a section of docs/alerts.md; every recording rule has a test of its value.

promtool comes with Debian's `prometheus` package; `.ci/run` installs it. Without it these
tests fail (not skip): rules nobody checked are worse than no rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import ALERTS, RECORDING, ROOT, rules

RULES_DIR = ROOT / "deploy" / "prometheus"
TESTS_DIR = RULES_DIR / "tests"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install prometheus; .ci/run does it) to check deploy/prometheus/"
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )


def promtool_test_files() -> list[Path]:
    files = sorted(TESTS_DIR.glob("*.yml"))
    assert files, f"no promtool test file in {TESTS_DIR}"
    return files


def promtool_cases() -> list[dict[str, Any]]:
    files = promtool_test_files()
    return [case for path in files for case in yaml.safe_load(path.read_text())["tests"]]


def test_rules_pass_promtool_check() -> None:
    done = run_promtool("check", "rules", ALERTS.name, RECORDING.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    files = [str(path.relative_to(RULES_DIR)) for path in promtool_test_files()]
    done = run_promtool("test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in promtool_cases():
        for check in case.get("alert_rule_test") or []:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules(ALERTS)}
    assert alerts - firing == set(), "alerts no test fires"
    assert alerts - quiet == set(), "alerts no test expects quiet"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_tested() -> None:
    tested = {
        check["expr"].split("{", 1)[0].strip()
        for case in promtool_cases()
        for check in case.get("promql_expr_test") or []
    }
    assert {rule["record"] for rule in rules(RECORDING)} - tested == set()


def section_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lowercase, punctuation out, spaces -)."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_severity_summary_description_and_runbook_section() -> None:
    anchors = section_anchors(ALERTS_DOC.read_text())
    for rule in rules(ALERTS):
        name, annotations = rule["alert"], rule.get("annotations", {})
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        assert annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("runbook") == f"docs/alerts.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/alerts.md has no section {name}"
