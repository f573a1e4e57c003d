"""``streamproc replay`` end to end: a live worker's range replayed offline gives its alerts back.

One live run (the synthetic workload with a 1-sigma shift of f03 in country=DE, as in
test_monitoring) is shared by the tests of this module; each replay is a subprocess of the
``streamproc`` command line with the worker's environment.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamproc.config import Config
from streamproc.redis_client import sync_client
from tests.conftest import Endpoints, config_for
from tests.integration.test_monitoring import MONITOR_ENV, _run
from tests.integration.workers import config_env, consume_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Live:
    cfg: Config
    alerts: list[dict]
    metrics: list[dict]
    offsets: dict[int, tuple[int, int]]  # partition -> (first, last) the worker read

    def range_args(self) -> list[str]:
        args = []
        for p, (first, last) in sorted(self.offsets.items()):
            args += ["--partition", str(p), "--from-offset", str(first), "--to-offset", str(last)]
        return args


def _watermarks(cfg: Config, topic: str) -> dict[int, tuple[int, int]]:
    consumer = Consumer({**cfg.kafka.librdkafka(), "group.id": f"check-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def live(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Live:
    cfg = config_for(endpoints, uuid.uuid4().hex[:10])
    alerts = _run(cfg, tmp_path_factory.mktemp("workers"), workers=1)
    metrics = [orjson.loads(m.value()) for m in consume_all(cfg, cfg.topics.metrics, 10**6, 3)]
    # The worker consumed every partition to its end: that is the range it processed.
    offsets = {
        p: (low, high - 1)
        for p, (low, high) in _watermarks(cfg, cfg.topics.predictions).items()
        if high > low
    }
    return Live(cfg, alerts, metrics, offsets)


def replay(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", "replay", *args],
        env=config_env(live.cfg, **MONITOR_ENV),
        capture_output=True,
        text=True,
        timeout=180,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def close(a: object, b: object) -> bool:
    """Equal, numbers up to float rounding."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        )
    return a == b


def comparable(record: dict) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "emitted_at"}, sort_keys=True)


@pytest.fixture(scope="module")
def full(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("replay") / "full"
    prefix = live.cfg.redis.prefix
    client = sync_client(live.cfg.redis)
    before = {k: client.dump(k) for k in client.scan_iter(f"{prefix}:*")}
    alerts_before = _watermarks(live.cfg, live.cfg.topics.alerts)
    done = replay(live, *live.range_args(), "--out", str(out), "--measure-raw")
    assert done.returncode == 0, done.stderr
    # The two rates, replay vs bare consume + orjson of the same range, for the record.
    print(done.stdout)
    # Isolation: the replay wrote nothing to Redis nor to the live alerts topic, and joined
    # no consumer group (it assigns partitions under a throw-away group id, committing nothing).
    assert {k: client.dump(k) for k in client.scan_iter(f"{prefix}:*")} == before
    assert _watermarks(live.cfg, live.cfg.topics.alerts) == alerts_before
    groups = AdminClient(live.cfg.kafka.librdkafka()).list_consumer_groups().result()
    assert not [g for g in groups.valid if g.group_id.startswith("streamproc-replay-")]
    yield out


def test_replay_of_the_workers_offsets_gives_back_its_alerts(live: Live, full: Path) -> None:
    assert live.alerts, "the live run must raise alerts to compare"
    replayed = lines(full / "alerts.jsonl")
    # The worker stopped once its windows closed; the replay also closes the last ones
    # (final). Up to the worker's last closed window the two must agree field by field.
    last_closed = max(m["window"]["end"] for m in live.metrics)
    got = [comparable(a) for a in replayed]
    want = [comparable(a) for a in live.alerts]
    missing = [w[:300] for w in want if w not in got]
    extra = [
        g[:300] for g, a in zip(got, replayed, strict=True)
        if a["window"]["end"] <= last_closed and g not in want
    ]  # fmt: skip
    assert not missing and not extra, f"live only: {missing}\nreplay only: {extra}"
    assert {a["detector"] for a in replayed} >= {"psi", "ks", "adwin"}
    # Emission order, too: the live alerts are a prefix-ordered subsequence of the replay's.
    positions = [got.index(w) for w in want]
    assert positions == sorted(positions)


def test_replay_of_the_workers_offsets_gives_back_its_incidents(live: Live, full: Path) -> None:
    topic = live.cfg.topics.incidents
    published = [orjson.loads(m.value()) for m in consume_all(live.cfg, topic, 10_000, 5)]
    assert published, "the live run must open an incident to compare"
    replayed = {comparable(i) for i in lines(full / "incidents.jsonl")}
    missing = [comparable(i)[:300] for i in published if comparable(i) not in replayed]
    assert not missing, f"live only: {missing}"
    page = (full / "report.html").read_text()
    assert page.index("What happened: incidents") < page.index("Which features drifted?")
    assert "feature f03" in page


def test_replay_metrics_match_the_live_windows(live: Live, full: Path) -> None:
    replayed = {
        (json.dumps(r["segment"], sort_keys=True), r["window"]["start"]): r
        for r in lines(full / "metrics.jsonl")
    }
    assert live.metrics
    for record in live.metrics:
        mine = replayed[(json.dumps(record["segment"], sort_keys=True), record["window"]["start"])]
        for key in ("count", "reference", "window", "model_version", "performance"):
            assert mine[key] == record[key]
        # Window moments are merged per batch (Chan et al.), so mean and std may differ from
        # the worker's, whose batches were cut elsewhere, in the last bits only.
        for section in ("features", "outputs"):
            assert close(mine[section], record[section]), (section, record["window"])


def test_emitted_at_is_the_end_of_the_last_window_replayed(full: Path) -> None:
    last = max(r["window"]["end"] for r in lines(full / "metrics.jsonl"))
    stamps = {r["emitted_at"] for r in lines(full / "alerts.jsonl") + lines(full / "metrics.jsonl")}
    assert stamps == {last}


@dataclass
class FromAlert:
    alert: dict
    out: Path


def first_psi_alert_in_de(live: Live) -> dict:
    firing = [
        a for a in live.alerts
        if a["status"] == "firing" and a["detector"] == "psi" and a["segment"] == {"country": "DE"}
    ]  # fmt: skip
    assert firing, "the live run must raise a PSI alert on country=DE"
    return firing[0]


@pytest.fixture(scope="module")
def from_alert(live: Live, tmp_path_factory: pytest.TempPathFactory) -> FromAlert:
    alert = first_psi_alert_in_de(live)
    out = tmp_path_factory.mktemp("replay") / "from-alert"
    done = replay(live, "--from-alert", alert["alert_id"], "--out", str(out))
    assert done.returncode == 0, done.stderr
    return FromAlert(alert, out)


def test_replay_from_an_alert_reports_the_feature_segment_and_start(
    from_alert: FromAlert,
) -> None:
    alert, page = from_alert.alert, (from_alert.out / "report.html").read_text()
    top = re.search(r'<tr class="hot" data-feature="([^"]+)" data-rank="1">', page)
    assert top is not None and top.group(1) == "f03"
    worst = re.search(r'data-segment="([^"]+)"', page)
    assert worst is not None and worst.group(1) == "country=DE"
    start = re.search(r'data-signal="country=DE\|f03\|psi" data-start="([^"]+)"', page)
    assert start is not None and start.group(1) == alert["window"]["start"]
    assert alert["alert_id"] in page
    assert page.count('src="data:image/svg+xml;base64,') >= 3
    # The replay re-detected the alert itself: same id, same window, same offsets.
    replayed = {a["alert_id"]: a for a in lines(from_alert.out / "alerts.jsonl")}
    assert comparable(replayed[alert["alert_id"]]) == comparable(alert)


def test_two_replays_of_one_range_write_identical_files(
    live: Live, from_alert: FromAlert, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    done = replay(live, "--from-alert", from_alert.alert["alert_id"], "--out", str(again))
    assert done.returncode == 0, done.stderr
    for name in ("alerts.jsonl", "metrics.jsonl"):
        first = (from_alert.out / name).read_bytes()
        assert first, f"{name} is empty"
        assert (again / name).read_bytes() == first, name


def test_replay_refuses_an_unknown_partition_an_empty_range_and_an_unknown_alert(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamproc.cli import main

    for key, value in config_env(live.cfg, **MONITOR_ENV).items():
        monkeypatch.setenv(key, value)
    out = str(tmp_path / "x")

    def refused(*args: str) -> str:
        assert main(["replay", *args, "--out", out]) == 2
        return capsys.readouterr().err

    topic = live.cfg.topics.predictions
    unknown = refused("--partition", "99", "--from-offset", "0", "--to-offset", "5")
    assert f"topic {topic!r} has no partition 99" in unknown
    p, (_, last) = next(iter(live.offsets.items()))
    past = refused("--partition", str(p), "--from-offset", str(last + 1),
                   "--to-offset", str(last + 10))  # fmt: skip
    assert "hold no record" in past
    empty = refused("--from-time", "2001-01-01T00:00:00Z", "--to-time", "2001-01-02T00:00:00Z")
    assert "holds no record" in empty
    assert "no alert '0123456789abcdef'" in refused("--from-alert", "0123456789abcdef")
    assert "is the live alerts topic" in refused(
        *live.range_args(), "--publish", live.cfg.topics.alerts
    )
    assert not Path(out).exists(), "a refused replay must not write anything"
