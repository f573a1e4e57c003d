"""Topic layout: read ``topology/topics.yaml``, create what is missing, report what differs.

``apply`` never alters an existing topic: a partition count or setting that differs from the
file is reported as a mismatch for a person to decide on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streamproc.config import Config
from streamproc.errors import TopicError

ROLES = ("predictions", "labels", "alerts", "incidents", "metrics", "deadletter")


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return (
            [f"created   {t}" for t in self.created]
            + [f"ok        {t}" for t in self.ok]
            + [f"MISMATCH  {m}" for m in self.mismatches]
        )


def partition_count(cfg: Config, topic: str) -> int:
    """How many partitions ``topic`` has (1 when it cannot be read: a worker still starts, and
    its stages expect one source of that topic)."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(cfg.kafka.librdkafka()).list_topics(topic, timeout=30)
    t = meta.topics.get(topic)
    return len(t.partitions) if t is not None and t.partitions else 1


def default_topics_file() -> Path:
    """``topology/topics.yaml`` of the source tree, else the copy shipped in the package."""
    repo = Path(__file__).resolve().parents[2] / "topology" / "topics.yaml"
    return repo if repo.exists() else Path(__file__).resolve().parents[1] / "data" / "topics.yaml"


def load_topics(cfg: Config, path: str | Path | None = None) -> list[TopicSpec]:
    """The topic specs for every role, named as the configuration names them."""
    path = Path(path) if path else default_topics_file()
    try:
        doc: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TopicError(f"cannot read {path}: {exc}") from None
    topics = doc.get("topics") or {}
    specs = []
    for role in ROLES:
        entry = topics.get(role)
        if not isinstance(entry, dict) or not isinstance(entry.get("partitions"), int):
            raise TopicError(f"{path}: topics.{role}.partitions must be an integer")
        conf = {str(k): str(v) for k, v in (entry.get("config") or {}).items()}
        specs.append(TopicSpec(role, getattr(cfg.topics, role), entry["partitions"], conf))
    return specs


def apply(
    cfg: Config,
    specs: list[TopicSpec],
    replication_factor: int | None = None,
    timeout: float = 30.0,
) -> ApplyReport:
    """Create missing topics; compare existing ones with their spec and report differences.

    Topics are created with ``replication_factor`` copies (default ``kafka.replication_factor``)
    and, from 3 copies on, ``min.insync.replicas`` 2 unless their spec sets it.
    """
    rf = replication_factor or cfg.kafka.replication_factor
    isr = {"min.insync.replicas": "2"} if rf >= 3 else {}
    admin = AdminClient(cfg.kafka.librdkafka())
    report = ApplyReport()
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise TopicError(f"cannot reach Kafka at {cfg.kafka.bootstrap}: {exc}") from None
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, rf, config={**isr, **s.config}) for s in missing],
            operation_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise TopicError(f"creating {name} failed: {exc}") from None
            report.created.append(name)
    present = [s for s in specs if s.name in existing]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present]
        described = admin.describe_configs(resources)
        for spec, res in zip(present, resources, strict=True):
            actual = described[res].result()
            problems = []
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                problems.append(f"partitions {have} (expected {spec.partitions})")
            for key, want in spec.config.items():
                got = actual[key].value if key in actual else None
                if got != want:
                    problems.append(f"{key}={got} (expected {want})")
            if problems:
                report.mismatches.append(f"{spec.name}: " + ", ".join(problems))
            else:
                report.ok.append(spec.name)
    return report
