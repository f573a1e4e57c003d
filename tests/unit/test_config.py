"""Configuration: defaults, YAML, environment overrides, and errors that say how to fix them."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.config import load_config
from streamproc.errors import ConfigError


def test_defaults_point_at_the_local_stack() -> None:
    cfg = load_config(env={})
    assert cfg.kafka.bootstrap == "127.0.0.1:9092"
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    assert cfg.topics.predictions == "predictions"
    assert cfg.worker.web_port == 6066


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  bootstrap: filehost:9092\nworker:\n  web_port: 7000\n")
    cfg = load_config(path, env={"STREAMPROC_KAFKA_BOOTSTRAP": "envhost:9092"})
    assert cfg.kafka.bootstrap == "envhost:9092"
    assert cfg.worker.web_port == 7000


def test_list_values_can_come_from_the_environment() -> None:
    cfg = load_config(env={"STREAMPROC_JOIN_PERFORMANCE_FEATURES": "[plan, country]"})
    assert cfg.join.performance_features == ["plan", "country"]


def test_sasl_credentials_come_from_the_environment_into_librdkafka_settings() -> None:
    cfg = load_config(
        env={
            "STREAMPROC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMPROC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAMPROC_KAFKA_SASL_USERNAME": "svc",
            "STREAMPROC_KAFKA_SASL_PASSWORD": "s3cret",
        }
    )
    conf = cfg.kafka.librdkafka()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.username"] == "svc"
    assert conf["sasl.password"] == "s3cret"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"STREAMPROC_WORKER_WEB_PORT": "99999"},
            "worker.web_port (from STREAMPROC_WORKER_WEB_PORT)",
        ),
        ({"STREAMPROC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
        ({"STREAMPROC_JOIN_LABEL_TTL_S": "-1"}, "join.label_ttl_s"),
        ({"STREAMPROC_KAFKA_BOOTSTRAPS": "x"}, "unknown setting kafka.bootstraps"),
        (
            {"STREAMPROC_REDIS_URL": "redis://a:6379,b:6379/0"},
            "only a Redis Cluster URL names several nodes",
        ),
    ],
)
def test_bad_values_fail_fast_naming_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(env=env)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  uri: redis://x\n")
    with pytest.raises(ConfigError, match=r"redis.*uri"):
        load_config(path, env={})


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STREAMPROC_CONFIG"):
        load_config(tmp_path / "nope.yaml", env={})


def test_per_model_monitoring_overrides_apply_to_that_model_only(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "monitoring:\n  window_s: 120\n  models:\n"
        "    churn:\n      window_s: 60\n      psi: {warning: 0.2}\n      adwin_delta: 0.0001\n"
    )
    cfg = load_config(path, env={}).monitoring
    churn = cfg.for_model("churn")
    assert (churn.window_s, churn.psi.warning, churn.psi.critical) == (60.0, 0.2, 0.25)
    assert churn.adwin_delta == 0.0001
    other = cfg.for_model("fraud")
    assert (other.window_s, other.psi.warning, other.adwin_delta) == (120.0, 0.1, 0.002)


def test_per_model_overrides_can_come_from_the_environment_as_json() -> None:
    env = {"STREAMPROC_MONITORING_MODELS": '{"churn": {"min_window_count": 500}}'}
    cfg = load_config(env=env).monitoring
    assert cfg.for_model("churn").min_window_count == 500
    assert cfg.for_model("other").min_window_count == 100


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ('{"churn": {"windw_s": 60}}', r"monitoring\.models\.churn\.windw_s.*'churn'"),
        ('{"churn": {"window_s": -5}}', r"monitoring\.models\.churn\.window_s.*'churn'"),
        ('{"churn": {"psi": {"warnin": 0.2}}}', r"monitoring\.models\.churn\.psi.*warnin"),
        ('{"churn": {"window_s": 25}}', r"monitoring\.models\.churn: window_s .* tick_s"),
    ],
)
def test_a_bad_per_model_override_fails_at_start_naming_model_and_key(
    models: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env={"STREAMPROC_MONITORING_MODELS": models})
