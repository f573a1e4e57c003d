"""``streamproc alerts tail`` and ``streamproc status`` as subprocesses against a real Kafka."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from streamproc.config import Config
from streamproc.contracts import Alert, MetricsRecord, Source, Window, encode
from streamproc.kafka import topics
from tests.integration.workers import config_env, produce

pytestmark = pytest.mark.integration

GARBAGE = b'{"schema": "alert.v1", "alert_id": '


def _alert(alert_id: str, **over: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": alert_id,
        "status": "firing",
        "severity": "critical",
        "kind": "feature_drift",
        "model_id": "churn",
        "model_version": "7",
        "feature": "tenure_months",
        "segment": {"country": "DE", "device": "ios"},
        "detector": "psi",
        "value": 0.4127,
        "threshold": 0.25,
        "window": Window("2024-03-05T14:00:00.000Z", "2024-03-05T14:05:00.000Z"),
        "evidence": {"episode_start": "2024-03-05T14:00:00.000Z"},
        "source": Source("predictions", {"0": [100, 250]}),
        "emitted_at": "2024-03-05T14:06:01.000Z",
    }
    fields.update(over)
    return Alert(**fields)


def _metrics(end: str, count: int, **over: Any) -> MetricsRecord:
    fields: dict[str, Any] = {
        "model_id": "churn",
        "model_version": "7",
        "segment": {"country": "DE", "device": "ios"},
        "window": Window("2024-03-05T14:00:00Z", end),
        "count": count,
        "reference": "baseline",
        "features": {
            "tenure_months": {"psi": 0.4127},
            "plan": {"psi": 0.021},
            "age": {"psi": None, "null_rate": 0.0},
        },
        "outputs": {},
        "performance": {},
        "emitted_at": end,
    }
    fields.update(over)
    return MetricsRecord(**fields)


# In topic order. The warning on the whole model comes first so that a severity filter has
# something to drop; the fraud alert fires and then resolves under a new id.
ALERTS = [
    _alert(
        "5d2e8a41c0b94f7e", severity="warning", segment={}, feature="plan", detector="js",
        value=0.0712, threshold=0.05,
    ),
    _alert("9b1c0e77d2a34f5e"),
    _alert(
        "e07f3c9a11d84b26", severity="warning", model_id="fraud", model_version="2",
        segment={"country": "FR"}, feature="amount", value=0.15, threshold=0.1,
    ),
    _alert(
        "41aa6b0f9e3c4d58", status="resolved", severity="warning", model_id="fraud",
        model_version="2", segment={"country": "FR"}, feature="amount", value=0.03,
        threshold=0.1,
    ),
]  # fmt: skip


@pytest.fixture
def published(config: Config) -> Config:
    """The test's topics holding the alerts above (plus garbage) and metrics records."""
    topics.apply(config, topics.load_topics(config))
    produce(
        config,
        config.topics.alerts,
        [encode(ALERTS[0]), GARBAGE, *(encode(a) for a in ALERTS[1:])],
    )
    records = [
        _metrics("2024-03-05T14:10:00Z", 1300),
        _metrics("2024-03-05T14:05:00Z", 1200),  # an older window, published later
        _metrics("2024-03-05T14:10:00Z", 5000, segment={}),
        _metrics(
            "2024-03-05T14:10:00Z", 800, model_id="fraud", model_version="2",
            segment={"country": "FR"}, features={"amount": {"psi": 0.03}},
        ),
    ]  # fmt: skip
    produce(config, config.topics.metrics, [encode(r) for r in records] + [b"\x00garbage"])
    # A record published three days ago (by its Kafka timestamp): outside the default 24 h.
    producer = Producer(config.kafka.librdkafka())
    old = _metrics("2024-03-02T14:10:00Z", 42, model_id="legacy", segment={})
    producer.produce(
        config.topics.metrics, encode(old), timestamp=int((time.time() - 3 * 86400) * 1000)
    )
    assert producer.flush(30) == 0
    produce(config, config.topics.incidents, [INCIDENT.read_bytes(), b"not json"])
    return config


INCIDENT = Path(__file__).resolve().parents[2] / "schemas/examples/incidents/opened.json"


def test_tail_prints_incidents_by_default_root_cause_first_members_folded(
    published: Config,
) -> None:
    result = _cli(published, "alerts", "tail", "--from-beginning", "--timeout", "8")
    assert result.returncode == 0, result.stderr
    (block,) = _blocks(result.stdout)
    head, *rest = block.splitlines()
    assert head.startswith("CRITICAL OPENED  model demo-churn/1  feature c1 changed in device=web")
    assert "4 alerts, 4 firing:" in rest[0]
    assert any("device=web" in line for line in rest[1:])
    assert rest[-1].startswith("  investigate: streamproc replay --from-alert ")
    assert "skipped" in result.stderr and "incidents" in result.stderr
    as_json = _cli(
        published, "alerts", "tail", "--from-beginning", "--json", "--max", "1", "--timeout", "20"
    )
    assert (
        json.loads(as_json.stdout)["incident_id"]
        == json.loads(INCIDENT.read_bytes())["incident_id"]
    )
    none = _cli(
        published, "alerts", "tail", "--from-beginning", "--model", "fraud", "--timeout", "5"
    )
    assert none.returncode == 0 and none.stdout == ""


def _cli(cfg: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env=config_env(cfg, NO_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _blocks(stdout: str) -> list[str]:
    return [b for b in stdout.strip().split("\n\n") if b]


def test_tail_from_beginning_prints_each_alert_readably_and_skips_garbage(
    published: Config,
) -> None:
    result = _cli(
        published, "alerts", "tail", "--alerts", "--from-beginning", "--max", "4", "--timeout", "20"
    )
    assert result.returncode == 0, result.stderr
    blocks = _blocks(result.stdout)
    assert len(blocks) == 4
    critical = blocks[1]
    assert critical.splitlines()[0] == (
        "CRITICAL FIRING  model churn/7  segment country=DE, device=ios  feature tenure_months"
    )
    assert "feature_drift by psi: value 0.4127 vs threshold 0.25" in critical
    assert "window 2024-03-05 14:00:00 - 14:05:00 UTC" in critical
    assert "streamproc replay --from-alert 9b1c0e77d2a34f5e --out ./replay-9b1c0e77" in critical
    assert blocks[0].startswith("WARNING FIRING  model churn/7  segment all  feature plan")
    assert "value 0.0712 vs threshold 0.05" in blocks[0]
    assert blocks[3].startswith("WARNING RESOLVED  model fraud/2  segment country=FR")
    assert "\033[" not in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1
    assert f"{published.topics.alerts}[0]@1" in warnings[0] and "invalid JSON" in warnings[0]


def test_tail_json_prints_one_alert_v1_per_line(published: Config) -> None:
    result = _cli(
        published,
        "alerts",
        "tail",
        "--alerts",
        "--from-beginning",
        "--json",
        "--max",
        "4",
        "--timeout",
        "20",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [msgspec.json.decode(line, type=Alert) for line in lines] == ALERTS


def test_tail_severity_critical_shows_only_the_critical_alert(published: Config) -> None:
    result = _cli(
        published, "alerts", "tail", "--alerts", "--from-beginning", "--severity", "critical",
        "--json", "--timeout", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [msgspec.json.decode(line, type=Alert) for line in result.stdout.splitlines()] == [
        ALERTS[1]
    ]


def test_tail_model_filter_and_a_new_tail_starts_at_the_end(published: Config) -> None:
    only_fraud = _cli(
        published, "alerts", "tail", "--alerts", "--from-beginning", "--model", "fraud", "--json",
        "--max", "2", "--timeout", "20",
    )  # fmt: skip
    assert [json.loads(line)["alert_id"] for line in only_fraud.stdout.splitlines()] == [
        "e07f3c9a11d84b26",
        "41aa6b0f9e3c4d58",
    ]
    from_end = _cli(published, "alerts", "tail", "--alerts", "--json", "--timeout", "5")
    assert from_end.returncode == 0 and from_end.stdout == ""


def test_status_shows_latest_window_top_psi_and_firing_alerts_per_monitor(
    published: Config,
) -> None:
    result = _cli(published, "status")
    assert result.returncode == 0, result.stderr
    incidents, table = result.stdout.split("\n\n", 1)
    assert incidents.splitlines()[0] == "OPEN INCIDENTS: 1"
    assert "demo-churn/1  feature c1 in device=web" in incidents
    header, *rows = table.strip().splitlines()
    assert header.split()[:3] == ["MODEL", "VERSION", "SEGMENT"]
    by_segment = {tuple(r.split()[:3]): r for r in rows}
    assert set(by_segment) == {("churn", "7", "all"), ("churn", "7", "country=DE,"),
                               ("fraud", "2", "country=FR")}  # fmt: skip
    de = by_segment[("churn", "7", "country=DE,")]
    assert "2024-03-05 14:10:00" in de and " 1300 " in de
    assert "tenure_months: 0.413, plan: 0.021" in de and de.endswith("1 critical")
    assert by_segment[("churn", "7", "all")].endswith("1 warning")
    assert by_segment[("fraud", "2", "country=FR")].endswith("-")  # resolved
    assert "legacy" not in result.stdout  # published three days ago
    assert "skipped 1 invalid message(s)" in result.stderr


def test_status_json_with_model_filter_and_a_longer_since(published: Config) -> None:
    result = _cli(published, "status", "--json", "--model", "churn")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["model_id"], r["segment"]) for r in rows] == [
        ("churn", {}),
        ("churn", {"country": "DE", "device": "ios"}),
    ]
    assert rows[1]["count"] == 1300 and rows[1]["window_end"] == "2024-03-05T14:10:00Z"
    assert rows[1]["firing"][0]["alert_id"] == "9b1c0e77d2a34f5e"

    week = json.loads(_cli(published, "status", "--json", "--since", "7d").stdout)
    assert [r["count"] for r in week if r["model_id"] == "legacy"] == [42]


def test_status_on_a_missing_topic_names_the_fix(config: Config) -> None:
    result = _cli(config, "status")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "streamproc topics apply" in result.stderr
