"""Debian's Prometheus scrapes a real worker and loads streamproc's alerting rules."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from streamproc.config import Config
from streamproc.dev.synthetic import WorkloadSpec, generate
from streamproc.kafka import topics
from streamproc.publish.judging import top_features
from tests.integration.test_monitoring import MONITOR_ENV
from tests.integration.workers import WorkerProcess, free_port, produce, read_topic, sample_sum

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "topology" / "prometheus-rules.yml"
RULE_NAMES = {
    rule["alert"]
    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
    for rule in group["rules"]
}
T = TypeVar("T")


class Prometheus:
    """A ``prometheus`` subprocess with its own storage, port and generated config."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus not installed (Debian's prometheus package); run scripts/setup")
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [
                {
                    "job_name": "streamproc",
                    "scrape_interval": "1s",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def wait_for(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``probe`` until it returns something other than ``None``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}); {self.tail()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                found = probe()
                if found is not None:
                    return found
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; {self.tail()}")

    def tail(self) -> str:
        self._log.flush()
        return "prometheus log tail:\n" + self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def prometheus_scraping(workdir: Path, worker: WorkerProcess) -> Iterator[Prometheus]:
    prom = Prometheus(workdir, [f"127.0.0.1:{worker.port}"])
    try:
        prom.wait_for(lambda: _ready(prom), 60, "prometheus /-/ready")
        yield prom
    finally:
        prom.stop()


def _ready(prom: Prometheus) -> bool | None:
    with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=5) as response:
        return True if response.status == 200 else None


@pytest.fixture
def applied(config: Config) -> Config:
    topics.apply(config, topics.load_topics(config))
    return config


def _psi_series(text: str, model: str) -> set[tuple[str, str]]:
    """(feature, segment) of every streamproc_feature_psi sample of ``model`` in /metrics."""
    return _series(text, "streamproc_feature_psi", model)


def _series(text: str, metric: str, model: str) -> set[tuple[str, str]]:
    """(feature, segment) of every ``metric`` sample of ``model`` in /metrics."""
    found = set()
    for labels in re.findall(rf"^{metric}\{{([^}}]*)\}}", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if got.get("model") == model:
            found.add((got["feature"], got["segment"]))
    return found


def _prediction(i: int) -> dict[str, Any]:
    return {
        "prediction_id": f"p{i}",
        "model_id": "m",
        "model_version": "1",
        "timestamp": 1_700_000_000 + i,
        "features": {"x": i % 7},
        "prediction": (i % 10) / 10,
    }


def test_prometheus_scrapes_the_worker_and_evaluates_every_rule(
    applied: Config, tmp_path: Path
) -> None:
    accepted, rejected = 60, 3
    produce(
        applied,
        applied.topics.predictions,
        [
            json.dumps([_prediction(i) for i in range(accepted)]).encode(),
            b"not json",
            b"",
            b'{"prediction_id": "x"}',
        ],
    )
    worker = WorkerProcess(applied, tmp_path)
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total") >= accepted + rejected,
            120, "the worker to read every event",
        )  # fmt: skip
        with prometheus_scraping(tmp_path / "prometheus", worker) as prom:

            def events_seen() -> dict[str, float] | None:
                result = prom.query('sum by (outcome) (streamproc_events_total{job="streamproc"})')
                seen = {r["metric"]["outcome"]: float(r["value"][1]) for r in result}
                return seen if seen == {"accepted": accepted, "deadletter": rejected} else None

            assert prom.wait_for(events_seen, 60, "streamproc_events_total in Prometheus")
            up = prom.query('up{job="streamproc"}')
            assert [(r["metric"]["instance"], r["value"][1]) for r in up] == [
                (f"127.0.0.1:{worker.port}", "1")
            ]

            def rules_evaluated() -> list[dict[str, Any]] | None:
                groups = prom.get("/api/v1/rules")["groups"]
                rules = [r for g in groups for r in g["rules"]]
                if {r["name"] for r in rules} != RULE_NAMES:
                    return None
                return rules if all(r["health"] == "ok" for r in rules) else None

            rules = prom.wait_for(rules_evaluated, 60, "every rule evaluated without error")
            assert {r["type"] for r in rules} == {"alerting"}
            groups = prom.get("/api/v1/rules")["groups"]
            assert {g["file"] for g in groups} == {str(RULES_FILE)}
            # A healthy worker with a trickle of bad input pages nobody.
            assert {r["name"]: r["state"] for r in rules} == dict.fromkeys(RULE_NAMES, "inactive")
    finally:
        worker.stop()


def test_prometheus_scrapes_the_drift_gauges_of_the_top_features_of_a_warmed_up_monitor(
    applied: Config, tmp_path: Path
) -> None:
    # Twenty minutes of event time at 5 events/s with labels: several monitor windows close.
    spec = WorkloadSpec(model_id="psi-check", rate=5.0, label_delay_median_s=5.0)
    predictions: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for event in generate(spec, n_events=6000, seed=11):
        (predictions if event.kind == "prediction" else labels).append(event.value)

    def batches(docs: list[dict[str, Any]]) -> list[bytes]:
        return [json.dumps(docs[i : i + 500]).encode() for i in range(0, len(docs), 500)]

    produce(applied, applied.topics.predictions, batches(predictions))
    produce(applied, applied.topics.labels, batches(labels))
    # Partitions this small workload leaves empty stop holding the watermark after 5 s; the
    # model has 23 features, /metrics shows the 5 most drifted per segment.
    env = {
        **MONITOR_ENV,
        "STREAMPROC_MONITORING_IDLE_TIMEOUT_S": "5",
        "STREAMPROC_MONITORING_METRICS_TOP_FEATURES": "5",
    }
    worker = WorkerProcess(applied, tmp_path, **env)
    try:
        worker.wait_for(
            lambda: worker.metric("streamproc_events_total") >= len(predictions) + len(labels),
            180, "the worker to read every event",
        )  # fmt: skip

        def psi_exported() -> bool:
            return "\nstreamproc_feature_psi{" in worker.metrics_text()

        # No baseline for this model: its monitors take their first window as the reference
        # (warm-up) and export PSI from the next closed window on.
        worker.wait_for(psi_exported, 120, "streamproc_feature_psi on the worker")
        with prometheus_scraping(tmp_path / "prometheus", worker) as prom:
            series = prom.wait_for(
                lambda: prom.query('streamproc_feature_psi{job="streamproc",model="psi-check"}')
                or None,
                60, "streamproc_feature_psi in Prometheus",
            )  # fmt: skip
        scraped = {(r["metric"]["feature"], r["metric"]["segment"]) for r in series}
        assert scraped <= _psi_series(worker.metrics_text(), "psi-check")
        assert all(float(r["value"][1]) >= 0 for r in series)

        # Once every window is judged, each segment exports exactly the top 5 features of its
        # last window on the metrics topic (which keeps all 23).
        worker.wait_until_judged(120)
        text = worker.metrics_text()
        exported: dict[str, set[str]] = {}
        for name in ("psi", "js", "null_rate"):
            for feature, seg in _series(text, f"streamproc_feature_{name}", "psi-check"):
                exported.setdefault(seg, set()).add(feature)
        expected: dict[str, set[str]] = {}
        for record in read_topic(applied, applied.topics.metrics):
            rows = {
                feature: row
                for feature, row in record["features"].items()
                if any(row.get(n) is not None for n in ("psi", "js", "null_rate"))
            }
            if record["model_id"] != "psi-check" or not rows:
                continue  # a window without drift figures leaves the gauges as they were
            seg = ",".join(f"{k}={v}" for k, v in sorted(record["segment"].items())) or "all"
            assert len(rows) > 5
            expected[seg] = set(top_features(rows, 5))
        assert exported == expected
        # Every partition carries its events in time order: none is late, whichever topic the
        # worker happened to read first (labels read ahead used to be dropped as late).
        assert worker.metric("streamproc_late_events_total") == 0
        assert max(len(f) for f in exported.values()) == 5
        # A poller that needs one counter asks for it alone (bench/pipeline_throughput.py
        # does, 20 times a second): the worker renders just that family.
        some = worker.metrics_text(["streamproc_events_total"])
        assert {ln.split("{")[0] for ln in some.splitlines() if not ln.startswith("#")} == {
            "streamproc_events_total"
        }
        assert sample_sum(some, "streamproc_events_total") == len(predictions) + len(labels)
    finally:
        worker.stop()
