"""docker-compose.yml cannot run here (no Docker engine); it must still agree with the code."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamproc.config import WorkerConfig
from streamproc.dev.stack import (
    DEFAULT_CLUSTER_KAFKA_PORT,
    DEFAULT_CLUSTER_REDIS_PORT,
    DEFAULT_KAFKA_PORT,
    DEFAULT_REDIS_PORT,
    KAFKA_VERSION,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_has_the_whole_stack() -> None:
    assert {"kafka", "redis", "worker", "prometheus", "grafana"} <= set(SERVICES)


def test_compose_kafka_is_the_same_version_in_kraft_mode() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert f"{DEFAULT_KAFKA_PORT}:{DEFAULT_KAFKA_PORT}" in kafka["ports"]


def test_compose_redis_port_matches_the_default() -> None:
    assert f"{DEFAULT_REDIS_PORT}:{DEFAULT_REDIS_PORT}" in SERVICES["redis"]["ports"]


def test_worker_points_at_the_compose_services_through_config_env() -> None:
    env = SERVICES["worker"]["environment"]
    host, port = env["STREAMPROC_KAFKA_BOOTSTRAP"].split(":")
    assert host == "kafka"
    assert port in SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert env["STREAMPROC_REDIS_URL"].startswith("redis://redis:")
    assert int(env["STREAMPROC_WORKER_WEB_PORT"]) == WorkerConfig().web_port


def test_prometheus_scrapes_the_worker_web_port() -> None:
    volumes = SERVICES["prometheus"]["volumes"]
    mounted = next(v.split(":")[0] for v in volumes if v.endswith("prometheus.yml:ro"))
    prom = yaml.safe_load((ROOT / mounted).read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert f"worker:{WorkerConfig().web_port}" in targets
    assert f"{WorkerConfig().web_port}:{WorkerConfig().web_port}" in SERVICES["worker"]["ports"]


def test_every_bind_mount_exists_in_the_repo() -> None:
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


CLUSTER = {name: svc for name, svc in SERVICES.items() if "cluster" in svc.get("profiles", [])}


def test_the_cluster_profile_is_opt_in() -> None:
    assert {"kafka", "redis", "topics", "worker"}.isdisjoint(CLUSTER)
    assert all("profiles" not in SERVICES[name] for name in ("kafka", "redis", "worker"))


def test_the_cluster_profile_has_the_local_cluster_stack_shapes() -> None:
    kafka = [CLUSTER[f"kafka-{i}"] for i in (1, 2, 3)]
    assert {svc["image"] for svc in kafka} == {f"apache/kafka:{KAFKA_VERSION}"}
    envs = [svc["environment"] for svc in kafka]
    assert len({env["CLUSTER_ID"] for env in envs}) == 1
    assert [env["KAFKA_NODE_ID"] for env in envs] == ["1", "2", "3"]
    for i, env in enumerate(envs):
        port = DEFAULT_CLUSTER_KAFKA_PORT + 2 * i
        assert f"PLAINTEXT://localhost:{port}" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    redis = [CLUSTER[f"redis-cluster-{i}"] for i in range(1, 7)]
    ports = [int(svc["command"][svc["command"].index("--port") + 1]) for svc in redis]
    assert ports == list(range(DEFAULT_CLUSTER_REDIS_PORT, DEFAULT_CLUSTER_REDIS_PORT + 6))
    assert all("--cluster-enabled" in svc["command"] for svc in redis)
    create = " ".join(CLUSTER["redis-cluster-create"]["command"])
    assert "--cluster-replicas 1" in create
    assert all(f"127.0.0.1:{port}" in create for port in ports)


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/compose_config built: docker compose's own loader (compose-go) and schema."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain on PATH to build scripts/compose_config")
    binary = tmp_path_factory.mktemp("compose") / "compose_config"
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=ROOT / "scripts" / "compose_config",
        env={**os.environ, "GOTOOLCHAIN": "local"},
        check=True,
        timeout=900,
    )
    return binary


def _load(binary: Path, compose: Path, *profiles: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), str(compose), *profiles], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("profiles", [(), ("cluster",)])
def test_docker_compose_loads_the_file_with_each_profile(
    compose_config: Path, profiles: tuple[str, ...]
) -> None:
    loaded = _load(compose_config, ROOT / "docker-compose.yml", *profiles)
    assert loaded.returncode == 0, loaded.stderr
    enabled = {line.split()[0] for line in loaded.stdout.splitlines()}
    expected = {
        name
        for name, svc in SERVICES.items()
        if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)
    }
    assert enabled == expected


def test_docker_compose_loader_refuses_what_the_schema_forbids(
    compose_config: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  kafka:\n    image: apache/kafka\n    replicas_typo: 3\n")
    loaded = _load(compose_config, broken)
    assert loaded.returncode == 1
    assert "replicas_typo" in loaded.stderr
