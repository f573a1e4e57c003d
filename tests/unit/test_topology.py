"""The Prometheus rules and the Grafana dashboard agree with the metrics the worker exports.

Every PromQL expression (rules, panel targets, template queries) is reduced to the metric names
it reads, and each must be a sample the worker renders from a fresh ``WorkerMetrics``. Rules and
dashboard expressions are parsed by Debian's ``promtool``; the rules' logic is checked with
``promtool test rules`` on synthetic series. docker-compose.yml must mount what the configs name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from streamproc.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topology"
RULES_FILE = TOPOLOGY / "prometheus-rules.yml"
DASHBOARD_FILE = TOPOLOGY / "grafana" / "dashboards" / "streamproc.json"
PROVIDER_FILE = TOPOLOGY / "grafana" / "dashboards" / "dashboards.yml"
DATASOURCE_FILE = TOPOLOGY / "grafana" / "datasources" / "prometheus.yml"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]

RULES: list[dict[str, Any]] = [
    rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]
]
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
# Prometheus adds ``job`` and ``instance`` to every scraped series and synthesises ``up``.
SCRAPE_LABELS = {"job", "instance"}


# -- reading PromQL ---------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_SELECTOR = re.compile(r"\b(streamproc_\w+|process_\w+|up)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w$])([a-zA-Z_:][\w:]*)(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The ``streamproc_*`` and ``process_*`` metrics and ``up`` that a PromQL expression
    reads."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = _GROUPING.sub(" ", text)
    return {
        n for n in _IDENT.findall(text) if n.startswith(("streamproc_", "process_")) or n == "up"
    }


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """Label names each selector of ``expr`` matches on, per metric."""
    found: dict[str, set[str]] = {}
    for name, body in _SELECTOR.findall(_STRING.sub('""', expr)):
        found.setdefault(name, set()).update(_MATCHER.findall(body))
    return found


def test_metric_names_reads_selectors_but_not_functions_labels_or_strings() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, topic) (rate(streamproc_batch_seconds_bucket"
        '{topic="predictions", reason="streamproc_fake"}[$__rate_interval])))'
        ' / on (instance) group_left (up) up{job="streamproc"} and streamproc_x offset 5m'
    )
    assert metric_names(expr) == {"streamproc_batch_seconds_bucket", "up", "streamproc_x"}
    assert metric_names("label_values(streamproc_windows_closed_total, model)") == {
        "streamproc_windows_closed_total"
    }
    assert matcher_labels(expr) == {
        "streamproc_batch_seconds_bucket": {"topic", "reason"},
        "up": {"job"},
    }


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))  # a collapsed row holds its panels
    return out


def _panel_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(DASHBOARD["panels"])
        for target in panel.get("targets", [])
    ]


def _variable_queries() -> list[tuple[str, str]]:
    out = []
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append((var["name"], query["query"] if isinstance(query, dict) else query))
    return out


def _all_exprs() -> list[tuple[str, str]]:
    return (
        [(f"rule {r['alert']}", r["expr"]) for r in RULES]
        + [(f"panel {t}", e) for t, e in _panel_exprs()]
        + [(f"variable {n}", q) for n, q in _variable_queries()]
    )


# -- what the worker exports ------------------------------------------------------------------


def _exported() -> tuple[set[str], dict[str, set[str]]]:
    """Sample names rendered by a fresh WorkerMetrics with every labelled metric touched once,
    and each sample's label names."""
    metrics = WorkerMetrics(CollectorRegistry())
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(**{name: "x" for name in metric._labelnames})
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return set(samples), samples


EXPORTED, EXPORTED_LABELS = _exported()
LINUX = Path("/proc/self/stat").exists()


def test_the_exported_names_include_the_suffixed_samples() -> None:
    assert {"streamproc_events_total", "streamproc_batch_seconds_bucket"} <= EXPORTED
    assert {"streamproc_label_delay_seconds_count", "streamproc_consumer_lag"} <= EXPORTED
    assert "streamproc_events" not in EXPORTED  # the counter's sample carries _total


@pytest.mark.parametrize(("where", "expr"), _all_exprs(), ids=[w for w, _ in _all_exprs()])
def test_every_expression_reads_only_metrics_the_worker_exports(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no streamproc metric in {expr!r}"
    missing = {n for n in names if n != "up" and n not in EXPORTED}
    if not LINUX:  # prometheus_client's process collector reads /proc
        missing = {n for n in missing if not n.startswith("process_")}
    assert not missing, f"{where} reads {sorted(missing)}, which the worker does not export"


@pytest.mark.skipif(not LINUX, reason="prometheus_client's process collector reads /proc")
def test_the_worker_exports_its_resident_memory() -> None:
    assert "process_resident_memory_bytes" in EXPORTED  # Linux: /proc (the dashboard plots it)


@pytest.mark.parametrize(("where", "expr"), _all_exprs(), ids=[w for w, _ in _all_exprs()])
def test_every_label_matcher_names_a_label_the_metric_has(where: str, expr: str) -> None:
    for name, labels in matcher_labels(expr).items():
        known = SCRAPE_LABELS | EXPORTED_LABELS.get(name, set())
        assert labels <= known, f"{where}: {name} has no label {sorted(labels - known)}"


# -- rules ------------------------------------------------------------------------------------


def test_rules_cover_drift_worker_lag_deadletter_and_labels() -> None:
    exprs = " ".join(r["expr"] for r in RULES)
    assert 'streamproc_incidents_open{severity="critical"}' in exprs
    assert "streamproc_alerts_firing" not in exprs  # raw alerts never page: incidents do
    assert 'up{job="streamproc"} == 0' in exprs
    assert "deriv(streamproc_consumer_lag[10m]) > 0" in exprs
    assert "rate(streamproc_deadletter_total[5m])" in exprs
    assert "rate(streamproc_events_total[5m])" in exprs
    assert "streamproc_never_labelled_ratio" in exprs
    assert 'streamproc_partials_total{result="late"}' in exprs
    assert "streamproc_late_events_total" in exprs


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_every_rule_has_severity_summary_description_and_for(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"].strip()
    assert len(rule["annotations"]["description"].split()) >= 10
    assert re.fullmatch(r"\d+[smh]", rule["for"])


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian's prometheus package); run scripts/setup")
    return found


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_accepts_the_rules() -> None:
    result = _run(_promtool(), "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in result.stdout


def test_promtool_accepts_the_prometheus_config_and_its_rule_files() -> None:
    result = _run(_promtool(), "check", "config", str(TOPOLOGY / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    # promtool has no bare "parse" command: recording rules make it parse each expression.
    substitute = {"$__rate_interval": "5m", "$model": ".*"}
    rules = []
    for i, (_, expr) in enumerate(_panel_exprs()):
        for var, value in substitute.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run(_promtool(), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


W = 'job="streamproc",instance="w:6066"'


def _expect(alertname: str, at: str, *labels: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alertname,
        "exp_alerts": [{"exp_labels": lbl} for lbl in labels],
    }


# Each case: input series (1-minute steps) and the alerts expected (or not) at given times.
RULE_CASES: dict[str, dict[str, Any]] = {
    "a_critical_incident_pages_once_per_root_cause_after_a_minute": {
        "input_series": [
            {
                "series": f'streamproc_incidents_open{{{W},model="churn",version="7",'
                'severity="critical",cause="feature f03",root="country=DE"}',
                "values": "0 0 1x10",
            },
            {
                "series": f'streamproc_incidents_open{{{W},model="churn",version="7",'
                'severity="critical",cause="performance",root="all"}',
                "values": "0 0 0 1x10",
            },
            {
                "series": f'streamproc_incidents_open{{{W},model="fraud",version="2",'
                'severity="warning",cause="volume",root="region=apac"}',
                "values": "1x12",
            },
        ],
        "alert_rule_test": [
            _expect("StreamprocIncidentCritical", "2m"),
            _expect(
                "StreamprocIncidentCritical",
                "6m",
                {
                    "severity": "critical",
                    "job": "streamproc",
                    "model": "churn",
                    "version": "7",
                    "cause": "feature f03",
                    "root": "country=DE",
                },
                {
                    "severity": "critical",
                    "job": "streamproc",
                    "model": "churn",
                    "version": "7",
                    "cause": "performance",
                    "root": "all",
                },
            ),
            _expect("StreamprocIncidentWarning", "10m"),
        ],
    },
    "a_warning_incident_open_for_30m_opens_a_ticket": {
        "input_series": [
            {
                "series": f'streamproc_incidents_open{{{W},model="fraud",version="2",'
                'severity="warning",cause="volume",root="region=apac"}',
                "values": "1x45",
            }
        ],
        "alert_rule_test": [
            _expect("StreamprocIncidentWarning", "20m"),
            _expect(
                "StreamprocIncidentWarning",
                "40m",
                {
                    "severity": "warning",
                    "job": "streamproc",
                    "model": "fraud",
                    "version": "2",
                    "cause": "volume",
                    "root": "region=apac",
                },
            ),
        ],
    },
    "a_worker_unscraped_for_2m_is_down": {
        "input_series": [{"series": f"up{{{W}}}", "values": "1 1 1 0x10"}],
        "alert_rule_test": [
            _expect("StreamprocWorkerDown", "4m"),
            _expect(
                "StreamprocWorkerDown",
                "8m",
                {"severity": "critical", "job": "streamproc", "instance": "w:6066"},
            ),
        ],
    },
    "a_stage_with_input_waiting_and_no_batch_for_5m_is_stalled": {
        "input_series": [
            {
                "series": f'streamproc_stage_input_pending{{{W},stage="judge"}}',
                "values": "3x20",
            },
            {
                # its last batch finished at t=0 (Unix time 0 in promtool's clock)
                "series": f'streamproc_stage_last_progress_seconds{{{W},stage="judge"}}',
                "values": "0x20",
            },
            {
                "series": f'streamproc_stage_input_pending{{{W},stage="predictions"}}',
                "values": "0x20",
            },
            {
                "series": f'streamproc_stage_last_progress_seconds{{{W},stage="predictions"}}',
                "values": "0x20",
            },
        ],
        "alert_rule_test": [
            _expect("StreamprocStageStalled", "4m"),
            _expect(
                "StreamprocStageStalled",
                "10m",
                {
                    "severity": "critical",
                    "job": "streamproc",
                    "instance": "w:6066",
                    "stage": "judge",
                },
            ),
        ],
    },
    "a_quarantined_model_pages_at_once": {
        "input_series": [
            {"series": f"streamproc_models_quarantined{{{W}}}", "values": "0 0 1x5"},
        ],
        "alert_rule_test": [
            _expect("StreamprocModelQuarantined", "1m"),
            _expect(
                "StreamprocModelQuarantined",
                "3m",
                {"severity": "critical", "job": "streamproc", "instance": "w:6066"},
            ),
        ],
    },
    "only_a_lag_that_grows_above_the_floor_alerts": {
        "input_series": [
            {
                "series": f'streamproc_consumer_lag{{{W},topic="predictions",partition="0"}}',
                "values": "1000+100x60",
            },
            {
                "series": f'streamproc_consumer_lag{{{W},topic="predictions",partition="1"}}',
                "values": "5000x60",
            },
            {
                "series": f'streamproc_consumer_lag{{{W},topic="labels",partition="0"}}',
                "values": "0+10x60",
            },
        ],
        "alert_rule_test": [
            _expect("StreamprocConsumerLagGrowing", "10m"),
            _expect(
                "StreamprocConsumerLagGrowing",
                "30m",
                {
                    "severity": "warning",
                    "job": "streamproc",
                    "instance": "w:6066",
                    "topic": "predictions",
                    "partition": "0",
                },
            ),
        ],
    },
    "two_percent_dead_letters_alert": {
        "input_series": [
            {
                "series": f'streamproc_events_total{{{W},topic="predictions",outcome="accepted"}}',
                "values": "0+6000x30",
            },
            {
                "series": f'streamproc_deadletter_total{{{W},reason="invalid_json"}}',
                "values": "0+120x30",
            },
        ],
        "alert_rule_test": [
            _expect(
                "StreamprocDeadLetterRateHigh",
                "20m",
                {"severity": "warning", "job": "streamproc", "instance": "w:6066"},
            )
        ],
    },
    "late_events_over_one_percent_alert_and_a_few_do_not": {
        "input_series": [
            {
                "series": f'streamproc_aggregated_events_total{{{W},model="churn"}}',
                "values": "0+1000x40",
            },
            {
                "series": f'streamproc_late_events_total{{{W},model="churn"}}',
                "values": "0+30x40",  # 3%
            },
            {
                "series": 'streamproc_aggregated_events_total{job="streamproc",'
                'instance="w:6067",model="churn"}',
                "values": "0+10000x40",
            },
            {
                "series": 'streamproc_late_events_total{job="streamproc",'
                'instance="w:6067",model="churn"}',
                "values": "0+50x40",  # 0.5%, though 750 in 15 minutes
            },
            {
                "series": 'streamproc_aggregated_events_total{job="streamproc",'
                'instance="w:6068",model="churn"}',
                "values": "0+100x40",
            },
            {
                "series": 'streamproc_late_events_total{job="streamproc",'
                'instance="w:6068",model="churn"}',
                "values": "0+5x40",  # 5%, though 75 in 15 minutes
            },
            {
                "series": f'streamproc_partials_total{{{W},result="late"}}',
                "values": "0x40",
            },
        ],
        "alert_rule_test": [
            _expect("StreamprocLateData", "5m"),
            _expect(
                "StreamprocLateData",
                "30m",
                {"severity": "warning", "job": "streamproc", "instance": "w:6066"},
            ),
        ],
    },
    "one_late_window_partial_alerts": {
        "input_series": [
            {
                "series": f'streamproc_partials_total{{{W},result="late"}}',
                "values": "0x5 1x30",
            },
            {
                "series": f'streamproc_partials_total{{{W},result="received"}}',
                "values": "0+50x35",
            },
        ],
        "alert_rule_test": [
            _expect("StreamprocLateData", "8m"),
            _expect(
                "StreamprocLateData",
                "18m",
                {"severity": "warning", "job": "streamproc", "instance": "w:6066"},
            ),
        ],
    },
    "dead_letters_below_the_ratio_or_the_rate_floor_do_not_alert": {
        "input_series": [
            # 0.05% of a busy stream, and 5% of a quiet one (0.05/s, under the 0.1/s floor).
            {
                "series": 'streamproc_events_total{job="streamproc",instance="busy:6066",'
                'topic="predictions",outcome="accepted"}',
                "values": "0+6000x30",
            },
            {
                "series": 'streamproc_deadletter_total{job="streamproc",instance="busy:6066",'
                'reason="invalid_json"}',
                "values": "0+3x30",
            },
            {
                "series": 'streamproc_events_total{job="streamproc",instance="quiet:6066",'
                'topic="predictions",outcome="accepted"}',
                "values": "0+60x30",
            },
            {
                "series": 'streamproc_deadletter_total{job="streamproc",instance="quiet:6066",'
                'reason="invalid_json"}',
                "values": "0+3x30",
            },
        ],
        "alert_rule_test": [_expect("StreamprocDeadLetterRateHigh", "25m")],
    },
    "never_labelled_share_far_above_the_long_run_share_alerts": {
        "input_series": [
            {"series": f'streamproc_join_total{{{W},result="joined"}}', "values": "0+600x200"},
            {
                "series": f'streamproc_join_total{{{W},result="expired_prediction"}}',
                "values": "0+400x200",
            },
            {"series": f"streamproc_never_labelled_ratio{{{W}}}", "values": "0.05x200"},
        ],
        "alert_rule_test": [
            _expect(
                "StreamprocNeverLabelledRising",
                "120m",
                {"severity": "warning", "job": "streamproc", "instance": "w:6066"},
            )
        ],
    },
    "a_steady_never_labelled_share_does_not_alert": {
        "input_series": [
            {"series": f'streamproc_join_total{{{W},result="joined"}}', "values": "0+950x200"},
            {
                "series": f'streamproc_join_total{{{W},result="expired_prediction"}}',
                "values": "0+50x200",
            },
            {"series": f"streamproc_never_labelled_ratio{{{W}}}", "values": "0.05x200"},
        ],
        "alert_rule_test": [_expect("StreamprocNeverLabelledRising", "120m")],
    },
    "a_partition_not_read_pages_after_two_minutes_and_clears_once_read": {
        "input_series": [
            {
                "series": f'streamproc_partitions_stalled{{{W},stage="labels"}}',
                "values": "0 1x4 0x5",
            },
            {
                "series": f'streamproc_partitions_stalled{{{W},stage="predictions"}}',
                "values": "0x10",
            },
        ],
        "alert_rule_test": [
            _expect("StreamprocPartitionStalled", "2m"),
            _expect(
                "StreamprocPartitionStalled",
                "4m",
                {
                    "severity": "critical",
                    "job": "streamproc",
                    "instance": "w:6066",
                    "stage": "labels",
                },
            ),
            _expect("StreamprocPartitionStalled", "7m"),
        ],
    },
}


def test_every_rule_has_a_case_where_it_fires() -> None:
    fired = {
        t["alertname"]
        for case in RULE_CASES.values()
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert fired == {r["alert"] for r in RULES}


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_rule_behaviour_under_promtool(case: str, tmp_path: Path) -> None:
    promtool = _promtool()
    # promtool compares annotations too; the templates are checked by `check rules` above, so
    # the logic (expr, for, labels) is tested on a copy without them.
    doc = yaml.safe_load(RULES_FILE.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", **RULE_CASES[case]}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = _run(promtool, "test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- dashboard --------------------------------------------------------------------------------


def _rows() -> dict[str, list[dict[str, Any]]]:
    """Panels by the row above them (or inside a collapsed row)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current = None
    for panel in sorted(DASHBOARD["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = list(panel.get("panels", []))
        else:
            assert current is not None, f"panel {panel['title']!r} is above every row"
            rows[current].append(panel)
    return rows


def _reads(panels: list[dict[str, Any]]) -> set[str]:
    return {n for p in panels for t in p.get("targets", []) for n in metric_names(t["expr"])}


def test_dashboard_on_call_row_shows_alerts_psi_top1_accuracy_and_workers() -> None:
    on_call = _reads(_rows()["On-call"])
    assert {
        "streamproc_incidents_open", "streamproc_alerts_firing", "streamproc_feature_psi",
        "streamproc_prediction_top1_rate",
        "streamproc_accuracy", "up",
    } <= on_call  # fmt: skip


def test_dashboard_debug_row_shows_throughput_deadletters_lag_latency_and_join() -> None:
    debug = _reads(_rows()["Debug"])
    assert {
        "streamproc_events_total", "streamproc_deadletter_total", "streamproc_consumer_lag",
        "streamproc_batch_seconds_bucket", "streamproc_label_delay_seconds_bucket",
        "streamproc_join_total", "streamproc_join_pending",
    } <= debug  # fmt: skip
    assert any(
        "histogram_quantile(0.95" in t["expr"] and "streamproc_batch_seconds_bucket" in t["expr"]
        for p in _rows()["Debug"]
        for t in p["targets"]
    )


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _panels(DASHBOARD["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_queries_the_provisioned_prometheus_datasource() -> None:
    assert 39 <= DASHBOARD["schemaVersion"] < 42
    assert DASHBOARD["uid"] and DASHBOARD.get("id") is None
    provisioned = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    prometheus = next(d for d in provisioned if d["type"] == "prometheus")
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == prometheus["type"]
    assert source["current"]["value"] in (prometheus["name"], prometheus.get("uid"))
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for panel in _panels(DASHBOARD["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ref, panel["title"]
        assert all(t["datasource"] == ref for t in panel["targets"]), panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]


# -- compose wiring ---------------------------------------------------------------------------


def _host_path(service: str, container_path: str) -> Path | None:
    """Where a path inside ``service``'s container comes from in the repo (bind mounts)."""
    best: tuple[int, Path] | None = None
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith("./"):
            continue
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            rest = container_path[len(target) :].lstrip("/")
            if best is None or len(target) > best[0]:
                best = (len(target), (ROOT / source / rest).resolve())
    return best[1] if best else None


def test_compose_mounts_the_rule_files_prometheus_yml_names() -> None:
    config_in_container = "/etc/prometheus/prometheus.yml"
    config = _host_path("prometheus", config_in_container)
    assert config == (TOPOLOGY / "prometheus.yml").resolve()
    rule_files = yaml.safe_load(config.read_text())["rule_files"]
    assert rule_files
    mounted = [
        _host_path("prometheus", str(Path(config_in_container).parent / f)) for f in rule_files
    ]
    assert RULES_FILE.resolve() in mounted
    assert all(m is not None and m.is_file() for m in mounted)


def test_compose_provisions_the_dashboard_and_the_datasource_in_grafana() -> None:
    provisioning = "/etc/grafana/provisioning"
    dashboards_dir = _host_path("grafana", f"{provisioning}/dashboards")
    assert dashboards_dir == PROVIDER_FILE.parent.resolve()
    assert _host_path("grafana", f"{provisioning}/datasources/prometheus.yml") == (
        DATASOURCE_FILE.resolve()
    )
    providers = yaml.safe_load(PROVIDER_FILE.read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    served = _host_path("grafana", providers[0]["options"]["path"])
    assert served is not None and (served / DASHBOARD_FILE.name).is_file()
