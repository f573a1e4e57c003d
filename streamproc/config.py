"""One configuration: a YAML file, then ``STREAMPROC_*`` environment overrides, validated at start.

Every key has a default that runs the local stack. Any value can be overridden from the
environment as ``STREAMPROC_<SECTION>_<KEY>`` (``STREAMPROC_KAFKA_BOOTSTRAP``,
``STREAMPROC_REDIS_URL``, ``STREAMPROC_WORKER_WEB_PORT``...). Credentials belong in the
environment or in a file outside the repository, never in code.

Examples
--------
>>> cfg = load_config(env={"STREAMPROC_KAFKA_BOOTSTRAP": "broker:9093"})
>>> cfg.kafka.bootstrap
'broker:9093'
>>> load_config(env={"STREAMPROC_WORKER_WEB_PORT": "http"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamproc.errors.ConfigError: worker.web_port (from STREAMPROC_WORKER_WEB_PORT): ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from streamproc.errors import ConfigError

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Probability = Annotated[float, msgspec.Meta(gt=0, lt=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaConfig(_Section):
    """How to reach Kafka. SASL and TLS settings map onto librdkafka's / aiokafka's."""

    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Copies of every topic streamproc creates (``topics apply``, the internal partials topic);
    # 3 on a production cluster, which then also gets min.insync.replicas 2.
    replication_factor: PositiveInt = 1

    @property
    def min_insync_replicas(self) -> int:
        """What a topic created with ``replication_factor`` copies requires for a write:
        2 of 3 (a broker may fail and nothing acknowledged is lost), 1 below 3.

        >>> KafkaConfig(replication_factor=3).min_insync_replicas
        2
        """
        return 2 if self.replication_factor >= 3 else 1

    def librdkafka(self) -> dict[str, str]:
        """The connection settings as confluent-kafka (librdkafka) expects them."""
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_cafile,
            "ssl.certificate.location": self.ssl_certfile,
            "ssl.key.location": self.ssl_keyfile,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        return conf


class RedisConfig(_Section):
    """How to reach Redis. ``rediss://`` for TLS; the password may come from ``password``.

    A Redis Cluster is selected by ``cluster: true`` or a ``redis+cluster://`` (TLS:
    ``rediss+cluster://``) URL naming any of its nodes, or several separated by commas
    (``redis+cluster://a:7000,b:7000,c:7000``: it starts from whichever answers); redis-py's
    cluster client finds the rest. On a cluster the join's state spreads over the nodes by join
    shard, and every other key (baselines, checkpoints, outbox, worker registry) carries the
    hash tag ``{key_prefix}`` so that the transactions over them stay in one slot.

    >>> RedisConfig(url="redis+cluster://10.0.0.5:7000").is_cluster
    True
    >>> RedisConfig(url="redis+cluster://10.0.0.5:7000").prefix
    '{streamproc}'
    >>> RedisConfig().prefix
    'streamproc'
    """

    url: str = "redis://127.0.0.1:6379/0"
    password: str | None = None
    key_prefix: str = "streamproc"
    cluster: bool = False

    def __post_init__(self) -> None:
        if "{" in self.key_prefix or "}" in self.key_prefix:
            raise ValueError(
                "key_prefix must not contain '{' or '}': streamproc adds its own Redis Cluster "
                "hash tags"
            )
        scheme = self.url.partition("://")[0]
        if scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
            raise ValueError(
                f"url scheme {scheme!r} is not one of redis://, rediss:// (TLS), unix://, "
                "redis+cluster://, rediss+cluster://"
            )
        if self.is_cluster and scheme == "unix":
            raise ValueError("a Redis Cluster is reached over TCP: use redis+cluster://host:port")
        hosts = self.url.partition("://")[2].partition("/")[0].rpartition("@")[2]
        if "," in hosts and not self.is_cluster:
            raise ValueError(
                "only a Redis Cluster URL names several nodes (redis+cluster://a:7000,b:7000); "
                "a single Redis is one host:port"
            )

    @property
    def is_cluster(self) -> bool:
        """Whether this is a Redis Cluster (``cluster: true`` or a ``+cluster`` URL)."""
        return self.cluster or self.url.partition("://")[0].endswith("+cluster")

    @property
    def prefix(self) -> str:
        """The prefix of every key but the join's: ``key_prefix``, in a hash tag on a cluster."""
        return f"{{{self.key_prefix}}}" if self.is_cluster else self.key_prefix


class TopicsConfig(_Section):
    """Topic names; their partitions and retention live in ``topology/topics.yaml``."""

    predictions: str = "predictions"
    labels: str = "labels"
    alerts: str = "alerts"
    metrics: str = "metrics"
    deadletter: str = "deadletter"
    incidents: str = "incidents"


class WorkerConfig(_Section):
    """The Faust worker."""

    app_id: str = "streamproc"
    web_host: str = "127.0.0.1"
    web_port: Port = 6066
    batch_size: PositiveInt = 2000
    batch_within_s: PositiveFloat = 0.05
    max_message_bytes: PositiveInt = 1_048_576
    max_batch_events: PositiveInt = 10_000
    # Faust's per-message path is event-loop bound; uvloop runs it ~20% cheaper.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Consumer-group session: a crashed worker's partitions move to another after this long.
    # Kafka brokers accept 6 s and up by default; Faust wants it under its 90 s request timeout.
    session_timeout_s: Annotated[float, msgspec.Meta(ge=6, le=90)] = 10.0
    # An owned partition whose input waits at the broker with nothing read for this long, while
    # its stage waits for input, is not being fetched: the worker asks the group to rebalance,
    # and exits if that does not cure it (see streamproc.worker.partitions).
    stall_timeout_s: Annotated[float, msgspec.Meta(ge=5)] = 60.0
    # An event's time is checked against its Kafka record's timestamp (so a replay decides the
    # same): further ahead than this, or (if set) older than max_age_s, it is dead-lettered
    # and moves no watermark. One producer with a wrong clock must not make the rest late.
    max_future_skew_s: PositiveFloat | None = 300.0
    max_age_s: PositiveFloat | None = None
    # After work, at most this often, the heap's free pages go back to the OS (glibc's
    # malloc_trim): a drained backlog does not keep its peak memory. None: never.
    memory_trim_s: PositiveFloat | None = 30.0


class JoinConfig(_Section):
    """The prediction-label join through Redis."""

    prediction_ttl_s: PositiveInt = 7 * 24 * 3600
    label_ttl_s: PositiveInt = 3600
    dedupe_ttl_s: PositiveInt = 24 * 3600
    sweep_interval_s: PositiveFloat = 10.0
    performance_features: list[str] = []


class Tiers(_Section):
    """A warning and a critical threshold; ``clear`` (hysteresis) defaults to 80% of warning.

    ``info`` (PSI only; off by default): a PSI at or above it but under ``warning`` that is
    beyond sampling noise (the same significance test the tiers use) raises an ``info`` alert,
    which no Prometheus rule pages on: ``info: 0`` flags every statistically certain shift,
    however small, as NannyML's per-chunk thresholds do.
    """

    warning: float
    critical: float
    clear: float | None = None
    info: float | None = None

    def clearing(self) -> float:
        return self.clear if self.clear is not None else 0.8 * self.warning


class MonitoringConfig(_Section):
    """Drift monitors: windows, detectors, thresholds. Defaults suit most deployments."""

    window_s: PositiveFloat = 300.0
    tick_s: PositiveFloat = 10.0
    lateness_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    idle_timeout_s: PositiveFloat = 120.0
    segment_dims: list[str] | None = None  # None: every dimension found in events
    max_segment_values: PositiveInt = 20
    features: list[str] | None = None  # None: every feature of the baseline or the events
    # /metrics exports the drift gauges of this many features per (model, segment), the most
    # drifted first; the metrics topic keeps every feature.
    metrics_top_features: PositiveInt = 20
    warmup_windows: PositiveInt = 1
    warmup_sample: PositiveInt = 5000
    warmup_min_rows: PositiveInt = 1000  # keep warming up over more windows until this many
    min_window_count: PositiveInt = 100
    min_labelled_count: PositiveInt = 200
    clear_windows: PositiveInt = 3
    psi: Tiers = msgspec.field(default_factory=lambda: Tiers(warning=0.1, critical=0.25))
    # A PSI tier counts only when sampling alone would reach that PSI with probability under
    # this level, split across every feature x segment of the model judged in one window
    # (Bonferroni). Per window: at 1e-4, a model closing ~300 windows per 10^6 events expects
    # ~0.03 false PSI alerts there.
    psi_significance: Probability = 0.0001
    js: Tiers = msgspec.field(default_factory=lambda: Tiers(warning=0.05, critical=0.1))
    # KS p-value levels per window for the whole model, split across features x segments
    # (Bonferroni), and only where the KS statistic is over ks_effect_floor. The seeds' 0.05 /
    # 0.01 gave one false alert per 10^6 stationary events on the synthetic workload.
    ks_p: Tiers = msgspec.field(default_factory=lambda: Tiers(warning=0.001, critical=0.0001))
    ks_effect_floor: Probability = 0.1
    # Multivariate drift (multivariate_drift / reconstruction_error), per segment whose baseline
    # has a PCA of its numeric features: the window's mean reconstruction error against the
    # reference's. A tier is its relative change (either way); it counts only beyond sampling
    # noise at psi_significance, split like PSI's (the check is one more test per segment).
    multivariate: bool = True
    reconstruction_error: Tiers = msgspec.field(
        default_factory=lambda: Tiers(warning=0.1, critical=0.25)
    )
    null_rate_delta: Tiers = msgspec.field(
        default_factory=lambda: Tiers(warning=0.02, critical=0.05)
    )
    new_category_share: Tiers = msgspec.field(
        default_factory=lambda: Tiers(warning=0.01, critical=0.05)
    )
    top1_rate: Probability = 0.8
    # Calibration (performance / calibration): a label window's ECE must be over `ece`, over
    # the reference's ECE at the window's confidences by more than `ece_margin`, and by more
    # than sampling noise gives at `ece_significance` (split across segments); judged only
    # from `ece_min_labelled` labelled predictions on (ten bins need a few hundred each).
    ece: PositiveFloat = 0.05
    ece_margin: PositiveFloat = 0.02
    ece_min_labelled: PositiveInt = 1000
    ece_significance: Probability = 0.0001
    # A feature the reference does not know, in at least this share of a window's events:
    # data_quality / new_feature (warning), resolved once it stays under 80% of the share.
    new_feature_share: Probability = 0.01
    accuracy_drop: Tiers = msgspec.field(default_factory=lambda: Tiers(warning=0.05, critical=0.1))
    # Regression models (performance / mae): a label window's MAE over the reference's by this
    # relative margin (0.2 = 20% more error), and by more than sampling noise gives at
    # `mae_significance` (one-sided, split across segments).
    mae_increase: Tiers = msgspec.field(default_factory=lambda: Tiers(warning=0.2, critical=0.5))
    mae_significance: Probability = 0.0001
    volume_drop: Tiers = msgspec.field(default_factory=lambda: Tiers(warning=0.5, critical=0.9))
    latency_slo_ms: PositiveFloat | None = None
    # ADWIN on each numeric feature's standardised tick mean (unit variance under no change),
    # per segment: the model-wide significance, split evenly across its ADWINs (numeric
    # features x segments), so more features or segments do not mean more false alarms.
    adwin_delta: Probability = 0.002
    # ADWIN on the joined error stream per segment: model-wide, split across segments.
    adwin_error_delta: Probability = 0.002
    # Page-Hinkley on the same standardised tick means, two-sided (mean up or down). A tick
    # mean feeds it as z * sqrt(n), so these are in units of that unit-variance stream:
    # threshold (lambda) on the cumulative deviation, delta the drift tolerated per tick,
    # min_instances ticks before it may fire, alpha the forgetting factor of its sums.
    page_hinkley_threshold: PositiveFloat = 20.0
    page_hinkley_delta: PositiveFloat = 1.0
    page_hinkley_min_instances: PositiveInt = 30
    page_hinkley_alpha: Probability = 0.9999
    # Partitions of the internal model-keyed topic `<app_id>-partials` (created when missing):
    # the most workers that can share the judging of different models.
    partials_partitions: PositiveInt = 6
    # How often a running worker re-reads the stored baselines (and at once when the baseline
    # store's version counter moves): a new, replaced or deleted baseline is picked up within it.
    baseline_refresh_s: PositiveFloat = 60.0
    # Per-model overrides: {model_id: {any key above: value}}, applied to that model's monitors
    # (see for_model). Checked at start: an unknown key or a bad value names the model.
    models: dict[str, dict[str, Any]] = {}

    def for_model(self, model_id: str) -> MonitoringConfig:
        """The settings for one model: these, with ``models[model_id]`` applied over them.

        A tier may be overridden in part (``{"psi": {"warning": 0.2}}`` keeps the critical).

        Raises
        ------
        ConfigError
            An override names an unknown key or holds a bad value.

        Examples
        --------
        >>> cfg = MonitoringConfig(models={"churn": {"window_s": 60, "psi": {"warning": 0.2}}})
        >>> c = cfg.for_model("churn")
        >>> c.window_s, c.psi.warning, c.psi.critical, cfg.for_model("other").window_s
        (60.0, 0.2, 0.25, 300.0)
        """
        over = self.models.get(model_id)
        if not over:
            return self
        where = f"monitoring.models.{model_id}"
        known = {f.name for f in msgspec.structs.fields(MonitoringConfig)} - {"models"}
        base = msgspec.to_builtins(self)
        base.pop("models")
        for key, value in over.items():
            if key in SHARED_SETTINGS:
                raise ConfigError(
                    f"{where}.{key}: {key} cannot be set per model: every model of a source "
                    f"partition shares its ticks and watermark; set monitoring.{key} instead"
                )
            if key not in known:
                raise ConfigError(
                    f"{where}.{key}: unknown monitoring setting for model {model_id!r}; "
                    f"known: {', '.join(sorted(known))}"
                )
            if isinstance(base.get(key), dict) and isinstance(value, dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        try:
            return msgspec.convert(base, MonitoringConfig, strict=False)
        except msgspec.ValidationError as exc:
            msg, _, at = str(exc).partition(" - at `$.")
            key = at.rstrip("`")
            raise ConfigError(f"{where}.{key or '?'} (model {model_id!r}): {msg}") from None


# Settings every model shares: the aggregation stage folds all models of a source partition
# with one clock (see streamproc.aggregate.clock).
SHARED_SETTINGS = frozenset(
    {"tick_s", "lateness_s", "idle_timeout_s", "partials_partitions", "baseline_refresh_s"}
)


class Config(_Section):
    """The whole configuration."""

    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    topics: TopicsConfig = msgspec.field(default_factory=TopicsConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    join: JoinConfig = msgspec.field(default_factory=JoinConfig)
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)


ENV_PREFIX = "STREAMPROC_"
CONFIG_ENV = "STREAMPROC_CONFIG"


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Map ``STREAMPROC_SECTION_KEY`` variables onto nested keys; remember where each came from."""
    sections = {f.name: f.type for f in msgspec.structs.fields(Config)}
    overrides: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section, struct in sections.items():
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                known = {f.name for f in msgspec.structs.fields(struct)}
                if key not in known:
                    raise ConfigError(
                        f"{name}: unknown setting {section}.{key}; "
                        f"known: {', '.join(sorted(known))}"
                    )
                parsed: Any = value
                if value.startswith(("[", "{")):  # a list, or a mapping as JSON / YAML flow
                    try:
                        parsed = yaml.safe_load(value)
                    except yaml.YAMLError as exc:
                        raise ConfigError(f"{name}: not valid JSON or YAML: {exc}") from None
                overrides.setdefault(section, {})[key] = parsed
                origin[f"{section}.{key}"] = name
                break
    return overrides, origin


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (``path`` or ``$STREAMPROC_CONFIG``), apply env overrides, validate.

    Raises
    ------
    ConfigError
        With the offending key, where it came from, and what is expected.
    """
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV)
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"config file {p} does not exist; set {CONFIG_ENV} or --config to a YAML file"
            )
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (kafka, redis, ...)")
        raw = loaded
    overrides, origin = _env_overrides(env)
    for section, values in overrides.items():
        merged = dict(raw.get(section) or {})
        merged.update(values)
        raw[section] = merged
    try:
        cfg = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        where = ""
        if " - at `$." in msg:
            msg, _, where = msg.partition(" - at `$.")
            where = where.rstrip("`")
        source = f" (from {origin[where]})" if where in origin else f" (in {path})" if path else ""
        raise ConfigError(f"{where or 'config'}{source}: {msg}") from None
    for model_id in cfg.monitoring.models:  # fail at start, not when the model first shows up
        try:
            eff = cfg.monitoring.for_model(model_id)
            if abs(eff.window_s / eff.tick_s - round(eff.window_s / eff.tick_s)) > 1e-9:
                raise ConfigError(
                    f"monitoring.models.{model_id}: window_s ({eff.window_s}) must be a multiple "
                    f"of tick_s ({eff.tick_s})"
                )
        except ConfigError as exc:
            source = origin.get("monitoring.models") or (str(path) if path else "config")
            raise ConfigError(f"{exc} (from {source})") from None
    return cfg
