"""The dashboard, the alert rules and the Prometheus configuration (infra/observability/)
ask only for metrics and labels the processes export (tests/support/metric_names.py).

A renamed metric or label would otherwise leave an empty panel or an alert that can never
fire, and nobody would notice until the day it should have. Every PromQL expression is
read by a small analyser (below): which metric names it selects, with which label
matchers, and which labels its `by (...)`, `on (...)` and `group_left (...)` clauses
name. The analyser is tested on broken queries too, so that each check can fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.live import ROOT
from tests.support.metric_names import (
    LABEL_VALUES,
    METRICS,
    TARGET_LABELS,
    labels_of_series,
    metric_of_series,
    series_names,
)

OBSERVABILITY = ROOT / "infra" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "ssd-img2img.json"
ALERTS = OBSERVABILITY / "prometheus" / "alerts.yml"
PROMETHEUS = OBSERVABILITY / "prometheus" / "prometheus.yml"
PROVISIONING = OBSERVABILITY / "grafana" / "provisioning"
OPERATIONS = ROOT / "docs" / "operations.md"

# ----------------------------------------------------------------- PromQL analyser

AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
FUNCTIONS = AGGREGATIONS | frozenset(
    {"abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp"}
    | {"clamp_max", "clamp_min", "count_over_time", "delta", "deriv", "exp", "floor"}
    | {"histogram_quantile", "idelta", "increase", "irate", "label_join", "label_replace"}
    | {"last_over_time", "ln", "log2", "log10", "max_over_time", "min_over_time"}
    | {"predict_linear", "present_over_time", "quantile_over_time", "rate", "resets"}
    | {"round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time"}
    | {"sum_over_time", "time", "timestamp", "vector"}
)
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "atan2", "inf", "nan"}
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")  # [5m], [$__rate_interval], subqueries [1h:5m]
_VARIABLE = re.compile(r"\$\{?\w+\}?")  # Grafana's $__rate_interval, ${var}
_BRACES = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\b\s*(\(([^()]*)\))?")
_NUMBER = re.compile(r"(?<![\w:.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?![\w:])")
_IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")


@dataclass
class Selector:
    """A metric name as the query selects it, with its label matchers."""

    series: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # label, op, value


@dataclass
class Grouping:
    """A `by`/`without`/`on`/... clause: the labels it names, and the series they must
    belong to (the aggregated argument's, or for a join the whole expression's)."""

    keyword: str
    labels: list[str]
    series: list[str]


@dataclass
class Query:
    selectors: list[Selector]
    groupings: list[Grouping]
    problems: list[str]

    def labels(self) -> frozenset[str]:
        """Every label any selected series may carry."""
        found: set[str] = set()
        for selector in self.selectors:
            found |= labels_of_series(selector.series) or set()
        return frozenset(found)


def _blank(work: list[str], start: int, end: int) -> None:
    work[start:end] = " " * (end - start)


def _matching_paren(text: str, start: int, step: int) -> int:
    """Index of the parenthesis matching the one at `start`, searching forwards (step 1)
    or backwards (step -1); -1 when unbalanced."""
    depth = 0
    index = start
    while 0 <= index < len(text):
        depth += {"(": step, ")": -step}.get(text[index], 0)
        if depth == 0:
            return index
        index += step
    return -1


def _aggregated_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The argument of the aggregation a `by (...)` at text[start:end] belongs to:
    `sum by (x) (ARG)` or `sum (ARG) by (x)`."""
    before = text[:start].rstrip()
    word = re.search(r"(\w+)$", before)
    if word and word[1] in AGGREGATIONS:
        after = end + len(text[end:]) - len(text[end:].lstrip())
        if after < len(text) and text[after] == "(":
            return after, _matching_paren(text, after, 1)
        return None
    if before.endswith(")"):
        close = len(before) - 1
        return _matching_paren(text, close, -1), close
    return None


def analyse(expr: str) -> Query:
    """What a PromQL expression selects and groups by (Grafana variables allowed)."""
    work = list(expr)
    for pattern in (_STRING, _RANGE):
        for match in pattern.finditer("".join(work)):
            _blank(work, match.start(), match.end())
    for match in _VARIABLE.finditer("".join(work)):
        _blank(work, match.start(), match.end())
    problems: list[str] = []
    matchers_at: dict[int, list[tuple[str, str, str]]] = {}
    for match in _BRACES.finditer("".join(work)):
        owner = re.search(r"([A-Za-z_:][\w:]*)\s*$", "".join(work[: match.start()]))
        if owner is None or owner[1] in KEYWORDS or owner[1] in FUNCTIONS:
            problems.append(f"a selector without a metric name: {{{match[1]}}}")
        body = expr[match.start(1) : match.end(1)]
        parts = [part for part in _split_matchers(body) if part.strip()]
        parsed = [_MATCHER.fullmatch(part) for part in parts]
        if not all(parsed):
            problems.append(f"unreadable label matchers: {{{body}}}")
        if owner is not None:
            matchers_at[owner.start(1)] = [(m[1], m[2], m[3]) for m in parsed if m]
        _blank(work, match.start(), match.end())
    clauses: list[tuple[str, list[str], int, int]] = []
    for match in _GROUPING.finditer("".join(work)):
        labels = [label.strip() for label in (match[3] or "").split(",") if label.strip()]
        clauses.append((match[1], labels, match.start(), match.end()))
        _blank(work, match.start(), match.end())
    for match in _NUMBER.finditer("".join(work)):
        _blank(work, match.start(), match.end())
    text = "".join(work)
    selectors: dict[int, Selector] = {}
    for match in _IDENTIFIER.finditer(text):
        name = match[0]
        following = text[match.end() :].lstrip()[:1]
        if name in KEYWORDS:
            continue
        if following == "(" or name in AGGREGATIONS:
            if name not in FUNCTIONS:
                problems.append(f"unknown function {name}()")
            continue
        selectors[match.start()] = Selector(name, matchers_at.get(match.start(), []))
    groupings = [
        _grouping(keyword, labels, start, end, text, selectors, problems)
        for keyword, labels, start, end in clauses
    ]
    return Query(list(selectors.values()), groupings, problems)


def _split_matchers(body: str) -> Iterator[str]:
    """The comma-separated matchers of a selector, commas inside strings kept."""
    start = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|,', body):
        if match[0] == ",":
            yield body[start : match.start()]
            start = match.end()
    yield body[start:]


def _grouping(
    keyword: str,
    labels: list[str],
    start: int,
    end: int,
    text: str,
    selectors: dict[int, Selector],
    problems: list[str],
) -> Grouping:
    if keyword not in ("by", "without"):
        return Grouping(keyword, labels, [s.series for s in selectors.values()])
    span = _aggregated_span(text, start, end)
    if span is None or -1 in span:
        problems.append(f"{keyword} ({', '.join(labels)}) belongs to no aggregation")
        return Grouping(keyword, labels, [])
    inside = [s.series for at, s in selectors.items() if span[0] < at < span[1]]
    return Grouping(keyword, labels, inside)


def complaints(expr: str) -> list[str]:
    """Everything in `expr` that the metric contract does not back."""
    query = analyse(expr)
    found = list(query.problems)
    if not query.selectors:
        found.append("names no metric")
    for selector in query.selectors:
        allowed = labels_of_series(selector.series)
        if allowed is None:
            found.append(f"{selector.series}: not a series of the contract")
            continue
        for label, op, value in selector.matchers:
            if label not in allowed:
                found.append(f"{selector.series}: no label {label}")
            found += _value_complaints(selector.series, label, op, value)
    for grouping in query.groupings:
        known = set(TARGET_LABELS)
        for series in grouping.series:
            known |= labels_of_series(series) or set()
        for label in grouping.labels:
            if label not in known:
                found.append(f"{grouping.keyword} ({label}): no such label on {grouping.series}")
    return found


def _value_complaints(series: str, label: str, op: str, value: str) -> list[str]:
    """A matcher on a label whose values the contract fixes must be able to match: `=`
    one of them, `=~` a list of alternatives of them (other regular expressions and
    negations are not checked)."""
    allowed = LABEL_VALUES.get((metric_of_series(series) or series, label))
    if allowed is None:
        return []
    if op == "=":
        values = [value]
    elif op == "=~" and re.fullmatch(r"\w+(\|\w+)*", value):
        values = value.split("|")
    else:
        return []
    return [
        f"{series}: {label}={v!r} is none of {sorted(allowed)}" for v in values if v not in allowed
    ]


def template_labels(text: str) -> set[str]:
    """Labels a Grafana legend (`{{queue}}`) or an alert template (`$labels.queue`) shows."""
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text)) | set(re.findall(r"\$labels\.(\w+)", text))


# ------------------------------------------------------------------ the analyser


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ("ssd_img2img_jobs_queud", "not a series of the contract"),
        ("rate(ssd_img2img_job_phase_seconds[5m])", "not a series of the contract"),
        ("ssd_img2img_jobs_queued_total", "not a series of the contract"),
        ("sum by (route) (ssd_img2img_jobs_queued)", "by (route): no such label"),
        ("sum(ssd_img2img_jobs_queued) by (route)", "by (route): no such label"),
        ('ssd_img2img_jobs_queued{route="/x"}', "no label route"),
        ('ssd_img2img_jobs_finished_total{outcome="succeeded"}', "'succeeded' is none of"),
        ('ssd_img2img_build_info{process=~"worker|gpu"}', "'gpu' is none of"),
        (
            "histogram_quantile(0.9, sum by (le, phase) "
            "(rate(ssd_img2img_job_queue_wait_seconds_bucket[5m])))",
            "by (phase): no such label",
        ),
        ("x * on (queue) group_left (process) ssd_img2img_jobs_queued", "x: not a series"),
        (
            "up * on (instance) group_left (phase) ssd_img2img_build_info",
            "group_left (phase): no such label",
        ),
        ("vector(1)", "names no metric"),
        ("rato(ssd_img2img_jobs_finished_total[5m])", "unknown function rato()"),
        ('{__name__="ssd_img2img_jobs_queued"}', "a selector without a metric name"),
        ("ssd_img2img_jobs_queued{queue}", "unreadable label matchers"),
    ],
)
def test_the_analyser_finds_what_the_contract_does_not_back(expr: str, complaint: str) -> None:
    found = complaints(expr)
    assert any(complaint in line for line in found), found


def test_the_analyser_reads_a_good_query_whole() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(ssd_img2img_http_request_duration_"
        'seconds_bucket{route="/v2/requests/{request_id}/status", method=~"GET|POST"}'
        "[$__rate_interval]))) > 1e3 and on () max(up) offset 5m"
    )
    query = analyse(expr)
    assert query.problems == []
    assert [s.series for s in query.selectors] == [
        "ssd_img2img_http_request_duration_seconds_bucket",
        "up",
    ]
    assert query.selectors[0].matchers == [
        ("route", "=", "/v2/requests/{request_id}/status"),
        ("method", "=~", "GET|POST"),
    ]
    by = query.groupings[0]
    assert (by.keyword, by.labels, by.series) == (
        "by",
        ["le", "route"],
        ["ssd_img2img_http_request_duration_seconds_bucket"],
    )
    assert complaints(expr) == []


# ------------------------------------------------------------------ the dashboard


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels() -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows too; rows themselves left out."""
    found = []
    for panel in _dashboard()["panels"]:
        found += [panel, *panel.get("panels", [])]
    return [panel for panel in found if panel["type"] != "row"]


def _dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in _panels() for target in panel["targets"]]


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _expressions() -> list[tuple[str, str]]:
    exprs = [(f"panel {title!r}", target["expr"]) for title, target in _dashboard_targets()]
    return exprs + [(f"alert {rule['alert']}", rule["expr"]) for rule in _alert_rules()]


def test_every_query_asks_for_metrics_and_labels_of_the_contract() -> None:
    found = [f"{where}: {line}" for where, expr in _expressions() for line in complaints(expr)]
    assert found == [], "\n".join(found)


def test_legends_and_alert_texts_show_labels_their_queries_have() -> None:
    shown: list[tuple[str, str, str]] = [
        (title, target["expr"], target.get("legendFormat", ""))
        for title, target in _dashboard_targets()
    ]
    for rule in _alert_rules():
        shown += [(rule["alert"], rule["expr"], text) for text in rule["annotations"].values()]
    for where, expr, text in shown:
        missing = template_labels(text) - analyse(expr).labels()
        assert not missing, f"{where}: {text!r} shows {missing}, which {expr!r} lacks"


def test_the_dashboard_shows_every_metric_of_the_contract() -> None:
    used = {s.series for _, t in _dashboard_targets() for s in analyse(t["expr"]).selectors}
    missing = [name for name in METRICS if not used & set(series_names(name))]
    assert missing == [], f"no panel shows {missing}"


def test_the_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "ssd-img2img" and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("DS_PROMETHEUS", "prometheus")
    every = [
        *dashboard["panels"],
        *[p for row in dashboard["panels"] for p in row.get("panels", [])],
    ]
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in _panels():
        assert panel["title"] and panel.get("description"), panel["id"]
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
    _assert_no_overlap(every)


def _assert_no_overlap(panels: list[dict[str, Any]]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


# ------------------------------------------------------------------ the alert rules

_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
ALERT_RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": "^ssd-img2img\\.[a-z]+$"},
                    "interval": _DURATION,
                    "rules": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/alert"}},
                },
            },
        }
    },
    "$defs": {
        "alert": {
            "type": "object",
            "required": ["alert", "expr", "for", "labels", "annotations"],
            "additionalProperties": False,
            "properties": {
                "alert": {"type": "string", "pattern": "^SsdImg2img[A-Z][A-Za-z0-9]+$"},
                "expr": {"type": "string", "minLength": 1},
                "for": {**_DURATION, "not": {"pattern": "^0+[a-z]+$"}},
                "keep_firing_for": _DURATION,
                "labels": {
                    "type": "object",
                    "required": ["severity"],
                    "properties": {"severity": {"enum": ["warning", "critical"]}},
                    "additionalProperties": {"type": "string"},
                },
                "annotations": {
                    "type": "object",
                    "required": ["summary", "description", "runbook"],
                    "properties": {
                        "summary": {"type": "string", "minLength": 10},
                        "description": {"type": "string", "minLength": 40},
                        "runbook": {
                            "type": "string",
                            "pattern": "^docs/operations\\.md#[a-z0-9-]+$",
                        },
                    },
                    "additionalProperties": {"type": "string"},
                },
            },
        }
    },
}


def test_alert_rules_have_the_structure_prometheus_reads() -> None:
    """`for`, a severity, a summary, a description and the runbook section each."""
    rules = yaml.safe_load(ALERTS.read_text())
    jsonschema.validate(rules, ALERT_RULES_SCHEMA)
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names)), "alert names repeat"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_each_alert_points_at_its_section_of_the_operations_guide() -> None:
    anchors = _anchors(OPERATIONS.read_text())
    for rule in _alert_rules():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no #{anchor}"


def test_the_alerts_cover_what_an_operator_must_hear_of() -> None:
    """The issue's list: a stale queue, queued work with no worker, crash loops, webhook
    failures, dependency errors, API 5xx."""
    used = {
        rule["alert"]: {s.series for s in analyse(rule["expr"]).selectors}
        for rule in _alert_rules()
    }
    wanted = {
        "ssd_img2img_oldest_queued_job_age_seconds",
        "ssd_img2img_worker_ready",
        "process_start_time_seconds",
        "ssd_img2img_webhook_attempts_total",
        "ssd_img2img_dependency_errors_total",
        "ssd_img2img_http_requests_total",
    }
    assert wanted <= set().union(*used.values()), wanted - set().union(*used.values())


# .ci/run installs promtool, so CI always runs this; a developer's machine without it
# skips it (Debian: apt-get install prometheus).
@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool (Prometheus) not installed",
)
def test_alert_rules_pass_their_promtool_tests() -> None:
    """alerts.test.yml: each alert fires on the series that should fire it, with its
    texts, and not on a healthy neighbour (Prometheus's own evaluator)."""
    assert shutil.which("promtool"), "promtool missing: .ci/run installs Debian's prometheus"
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ Prometheus and Grafana


def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def test_prometheus_config_loads_the_alerts_and_scrapes_every_process() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    rule_files = [PROMETHEUS.parent / path for path in config["rule_files"]]
    assert rule_files == [ALERTS]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"api", "worker", "background"}
    targets = {
        "api": jobs["api"]["static_configs"][0]["targets"],
        "background": jobs["background"]["static_configs"][0]["targets"],
        "worker": [
            f"{name}:{sd['port']}"
            for sd in jobs["worker"]["dns_sd_configs"]
            for name in sd["names"]
        ],
    }
    assert targets == {
        "api": ["api:9100"],
        "background": ["background:9100"],
        "worker": ["worker:9100"],
    }
    services = _compose_services()
    for name in targets:  # where each process serves /metrics (never the public port)
        assert services[name]["environment"]["METRICS_PORT"] == "9100", name


def test_grafana_provisioning_matches_the_dashboard_and_the_compose_mounts() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (variable,) = [v for v in _dashboard()["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert source["uid"] == variable["current"]["value"] == "prometheus"
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    services = _compose_services()
    assert "prometheus" in services
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "ssd-img2img.yml").read_text())[
        "providers"
    ]
    mounts = {
        source: target
        for service in ("prometheus", "grafana")
        for source, target, *_ in (v.split(":") for v in services[service]["volumes"])
    }
    assert mounts["./infra/observability/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_in_container = Path(mounts["./infra/observability/grafana/ssd-img2img.json"])
    assert dashboard_in_container.parent == Path(provider["options"]["path"])
    assert mounts["./infra/observability/prometheus"] == "/etc/prometheus"
