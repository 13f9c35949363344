"""The metric names a PromQL expression reads, and the expressions of bot's Prometheus rules
and Grafana dashboard: for the contract test that they only name metrics the exporter serves.

Not a PromQL parser: the expression is cut down to what can be a metric name. Out go string
literals (label values, regexes, Grafana's `"$job"`), label matchers `{...}`, ranges and
subqueries `[...]` (durations, `$__rate_interval`), and the label lists of `by`, `without`,
`on`, `ignoring`, `group_left` and `group_right`. What is left is identifiers: a name followed
by `(` is a function or an aggregation, a keyword (`and`, `offset`, `bool`, ...) is none, a
`$variable` or a number's suffix (the `m` of `15m`) is none, and everything else is a metric
name (or a recording rule's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RECORDING = ROOT / "deploy" / "prometheus" / "recording.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bot-fleet.json"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
#: An identifier that does not start inside a word, a number (`1e3`, `15m`) or a `$variable`.
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric (or recording rule) names `expr` reads."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and match.group().lower() not in KEYWORDS:
            names.add(match.group())
    return names


def rules(path: Path) -> list[dict[str, Any]]:
    """Every rule of a Prometheus rule file, all groups."""
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules(RECORDING)}


def rule_expressions() -> Iterator[tuple[str, str]]:
    """(where, expr) of every alerting and recording rule."""
    for path in (ALERTS, RECORDING):
        for rule in rules(path):
            yield f"{path.name}: {rule.get('alert') or rule.get('record')}", str(rule["expr"])


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # a collapsed row holds its panels


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(where, expr) of every panel query and every query variable (for `label_values(metric,
    label)`, the metric selector: its second argument is a label name)."""
    board = dashboard()
    for panel in _panels(board.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield f"panel {panel['title']!r} {target['refId']}", str(target["expr"])
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else str(query)
        values_of = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
        yield f"variable {variable['name']!r}", values_of.group(1) if values_of else query
