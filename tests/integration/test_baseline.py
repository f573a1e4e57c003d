"""Baselines against real Redis and Kafka: the CLI from files and topic ranges, and the store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.baseline import (
    ALL,
    AsyncBaselineStore,
    BaselineStore,
    CategoricalReference,
    NumericReference,
    ProfileBuilder,
    ReferenceProfile,
    outputs_of,
    profile_from_file,
)
from streamproc.config import Config
from streamproc.contracts import Prediction
from streamproc.dev.synthetic import Workload, WorkloadSpec
from streamproc.kafka import topics
from streamproc.redis_client import async_client, sync_client
from tests.integration.workers import config_env

pytestmark = pytest.mark.integration

SPEC = WorkloadSpec()
ROWS = 20_000
SEED = 21


def _cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env=config_env(config),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _store(config: Config) -> BaselineStore:
    return BaselineStore(sync_client(config.redis), config.redis.prefix)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reference")
    Workload(SPEC, ROWS, SEED).write_reference(
        csv_path=d / "train.csv", jsonl_path=d / "train.jsonl"
    )
    files = {"csv": d / "train.csv", "jsonl": d / "train.jsonl"}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return files
    rows = [orjson.loads(line) for line in files["jsonl"].read_bytes().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), d / "train.parquet")
    files["parquet"] = d / "train.parquet"
    return files


def _without_origin(profile: ReferenceProfile) -> ReferenceProfile:
    return msgspec.structs.replace(profile, model_version="", source="", created_at="")


def test_build_from_csv_jsonl_and_parquet_stores_the_same_profile(
    config: Config, reference: dict[str, Path]
) -> None:
    store = _store(config)
    built: dict[str, ReferenceProfile] = {}
    for kind in ("csv", "jsonl", "parquet"):
        if kind not in reference:
            continue  # pyarrow is not installed
        args = ["--model", SPEC.model_id, "--version", kind, "--segments", "country,device"]
        done = _cli(config, "baseline", "build", *args, "--from-file", str(reference[kind]))
        assert done.returncode == 0, done.stderr
        assert f"{ROWS} rows" in done.stdout
        profile = store.get(SPEC.model_id, kind)
        assert profile is not None
        built[kind] = profile

    profile = built["csv"]
    assert profile.source == str(reference["csv"].resolve())
    assert {"all", "country=DE", "device=ios"} <= set(profile.segments)
    assert len(profile.segments) == 1 + 4 + 3
    seg = profile.segments[ALL]
    kinds = [type(ref) for ref in seg.features.values()]
    assert kinds.count(NumericReference) == 20 and kinds.count(CategoricalReference) == 3
    assert seg.count == ROWS
    assert seg.accuracy == pytest.approx(0.9, abs=0.015)
    assert seg.calibration is not None and sum(seg.calibration.counts) == ROWS
    assert profile.positive_class == "yes"
    for other in built.values():
        assert _without_origin(other) == _without_origin(profile)

    last = list(built)[-1]
    assert store.latest_version(SPEC.model_id) == last
    assert store.versions(SPEC.model_id) == sorted(built)
    shown = _cli(config, "baseline", "show", "--model", SPEC.model_id, "--segment", "device=ios")
    assert shown.returncode == 0, shown.stderr
    assert f"baseline {SPEC.model_id}/{last}" in shown.stdout
    assert "country=DE" in shown.stdout and "segment device=ios:" in shown.stdout
    assert "f07" in shown.stdout and "categorical" in shown.stdout


def test_build_errors_exit_2_with_one_line(config: Config, reference: dict[str, Path]) -> None:
    base = ["baseline", "build", "--model", "m", "--version", "1"]
    cases = [  # the file errors' wording is pinned in-process by tests/unit/test_baseline.py
        ([*base, "--from-file", str(reference["csv"]), "--segments", "plan"], "no column 'plan'"),
        (["baseline", "show", "--model", "never-built"], "no baseline for never-built"),
    ]
    for args, message in cases:
        done = _cli(config, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("streamproc: ") and message in done.stderr
        assert done.stderr.count("\n") == 1
    assert _store(config).versions("m") == []


def test_store_keeps_versions_and_the_latest(config: Config) -> None:
    client = sync_client(config.redis)
    store = BaselineStore(client, config.redis.prefix)
    profiles = []
    for version in ("2", "10", "3"):
        builder = ProfileBuilder("churn", version, ["country"])
        for i in range(30):
            builder.add({"x": float(i) * int(version)}, prediction="a", segments={"country": "DE"})
        profiles.append(builder.build(f"v{version}"))
        key = store.put(profiles[-1])
        assert key == f"{config.redis.prefix}:baseline:churn:{version}"
        assert client.get(key)[:4] == b"SPR1"  # type: ignore[index]
    assert store.get("churn", "10") == profiles[1]
    assert store.get("churn", "4") is None and store.latest("nobody") is None
    assert store.latest_version("churn") == "3"
    assert store.latest("churn") == profiles[2]
    assert store.versions("churn") == ["10", "2", "3"]
    assert [p.model_version for p in store.all_versions("churn")] == ["10", "2", "3"]
    assert store.models() == {"churn": "3"}
    assert client.hget(f"{config.redis.prefix}:baselines", "churn") == b"3"

    async def read_async() -> tuple[Any, ...]:
        aclient = async_client(config.redis)
        try:
            astore = AsyncBaselineStore(aclient, config.redis.prefix)
            builder = ProfileBuilder("churn", "11")
            builder.add({"x": 1.0})
            await astore.put(builder.build("async"))
            return (
                await astore.latest("churn"),
                await astore.get("churn", "2"),
                await astore.versions("churn"),
                len(await astore.all_versions("churn")),
            )
        finally:
            await aclient.aclose()

    latest, v2, versions, n = asyncio.run(read_async())
    assert latest.model_version == "11" and latest.source == "async"
    assert v2 == profiles[0]
    assert versions == ["10", "11", "2", "3"] and n == 4
    assert store.latest_version("churn") == "11"


# -- topic ranges -------------------------------------------------------------------------------


def _produce_batches(
    config: Config, topic: str, docs: list[dict[str, Any]], size: int, partition: int | None = None
) -> None:
    """Array messages of ``size`` events, each with its first event's time as record time."""
    producer = Producer({**config.kafka.librdkafka(), "linger.ms": 20})
    for i in range(0, len(docs), size):
        batch = docs[i : i + size]
        extra = {} if partition is None else {"partition": partition}
        producer.produce(
            topic,
            value=orjson.dumps(batch),
            timestamp=round(batch[0]["timestamp"] * 1000),
            **extra,
        )
        producer.poll(0)
    assert producer.flush(30) == 0


def _close(a: ReferenceProfile, b: ReferenceProfile) -> None:
    """Equal up to summation order in the moments and confidences on a bin edge."""
    assert list(a.segments) == list(b.segments)
    assert a.positive_class == b.positive_class
    for key, sa in a.segments.items():
        sb = b.segments[key]
        assert sa.count == sb.count
        assert sa.accuracy == pytest.approx(sb.accuracy, abs=1e-12)
        assert sa.top1_rate == sb.top1_rate
        assert sa.features.keys() == sb.features.keys()
        for name in [*sa.features, "(outputs)"]:
            pairs = (
                [(sa.features[name], sb.features[name])]
                if name in sa.features
                else [(sa.prediction, sb.prediction), (sa.score, sb.score), (sa.label, sb.label)]
            )
            for fa, fb in pairs:
                if isinstance(fa, NumericReference):
                    assert isinstance(fb, NumericReference)
                    assert (fa.edges, fa.probs, fa.count, fa.nulls) == (
                        fb.edges,
                        fb.probs,
                        fb.count,
                        fb.nulls,
                    )
                    assert fa.mean == pytest.approx(fb.mean, rel=1e-9, abs=1e-12)
                    assert fa.std == pytest.approx(fb.std, rel=1e-9)
                    assert (fa.min, fa.max) == (fb.min, fb.max)
                else:
                    assert fa == fb
        assert sa.calibration is not None and sb.calibration is not None
        np.testing.assert_allclose(
            sa.calibration.counts, sb.calibration.counts, atol=0.01 * sa.count
        )
        np.testing.assert_allclose(sa.calibration.accuracy, sb.calibration.accuracy, atol=0.02)


def test_build_from_a_topic_time_range_matches_the_file_of_the_same_rows(
    config: Config, reference: dict[str, Path]
) -> None:
    topics.apply(config, topics.load_topics(config))
    work = Workload(SPEC, ROWS, SEED)
    _produce_batches(config, config.topics.predictions, list(work.predictions()), 200)
    _produce_batches(config, config.topics.labels, list(work.labels()), 200)

    args = [
        "--model",
        SPEC.model_id,
        "--version",
        SPEC.model_version,
        "--segments",
        "country,device",
    ]
    done = _cli(
        config, "baseline", "build", *args,
        "--from-topic", config.topics.predictions,
        "--from-time", "2024-01-01T00:00:00Z", "--to-time", "2024-01-01T01:00:00Z",
        "--labels-topic", config.topics.labels,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    from_topic = _store(config).get(SPEC.model_id, SPEC.model_version)
    assert from_topic is not None
    assert from_topic.source.startswith(f"kafka:{config.topics.predictions} record time")
    from_file = profile_from_file(
        reference["csv"], SPEC.model_id, SPEC.model_version, ["country", "device"]
    )
    _close(from_topic, from_file)
    assert from_topic.segments[ALL].rate_per_s == pytest.approx(SPEC.rate, rel=1e-3)
    de = from_topic.segments["country=DE"]
    assert de.rate_per_s == pytest.approx(SPEC.rate * de.count / ROWS, rel=1e-3)
    assert from_file.segments[ALL].rate_per_s is None

    # a range before the data holds nothing of the model
    empty = _cli(
        config, "baseline", "build", *args,
        "--from-topic", config.topics.predictions,
        "--from-time", "2023-01-01T00:00:00Z", "--to-time", "2023-01-02T00:00:00Z",
    )  # fmt: skip
    assert empty.returncode == 2 and "no demo-churn/1 prediction" in empty.stderr


def test_build_from_an_offset_range_reads_exactly_those_offsets(config: Config) -> None:
    topic = f"{config.topics.predictions}-one"
    admin = AdminClient(config.kafka.librdkafka())
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)
    topics.apply(config, topics.load_topics(config))
    work = Workload(SPEC, 3_000, seed=5)
    docs = list(work.predictions())
    _produce_batches(config, topic, docs, 100, partition=0)
    _produce_batches(config, config.topics.labels, list(work.labels()), 100)

    done = _cli(
        config, "baseline", "build", "--model", SPEC.model_id, "--version", "1",
        "--from-topic", topic, "--partition", "0", "--from-offset", "5", "--to-offset", "9",
        "--labels-topic", config.topics.labels, "--label-grace", "3600", "--segments", "device",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = _store(config).get(SPEC.model_id, "1")
    assert got is not None
    assert (
        got.source == f"kafka:{topic} partition 0 offsets 5..9, labels from {config.topics.labels}"
    )

    labels = {lab["prediction_id"]: lab["label"] for lab in work.labels()}
    builder = ProfileBuilder(SPEC.model_id, "1", ["device"], positive_class="yes")
    for doc in docs[500:1000]:
        event = msgspec.json.decode(json.dumps(doc), type=Prediction)
        prediction, score, confidence = outputs_of(event, "yes")
        builder.add(
            event.features, prediction, score, labels[event.prediction_id], event.segments,
            float(doc["timestamp"]), confidence=confidence,
        )  # fmt: skip
    want = builder.build(got.source, created_at=got.created_at)
    assert got.rows == 500
    _close(got, want)
    assert got.segments[ALL].rate_per_s == pytest.approx(want.segments[ALL].rate_per_s)

    beyond = _cli(
        config, "baseline", "build", "--model", SPEC.model_id, "--version", "1",
        "--from-topic", topic, "--partition", "3", "--from-offset", "0", "--to-offset", "1",
    )  # fmt: skip
    assert beyond.returncode == 2 and "has no partition 3" in beyond.stderr
