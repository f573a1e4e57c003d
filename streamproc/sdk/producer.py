"""The producer SDK for model servers: validate, batch and send ``prediction.v1``/``label.v1``.

:class:`PredictionLogger` checks every event against the Structs the worker decodes with
(:mod:`streamproc.contracts`), so a bad event raises :class:`InvalidEvent` in the model server
instead of becoming a dead letter later. Valid events are grouped per destination partition and
each group is sent as one Kafka message holding a JSON array of events, which amortises the
per-message cost in Kafka and in the worker.

The partition of an event is the one Kafka's Java client would pick for ``key=prediction_id``
(:func:`default_partition`: murmur2 of the key bytes, made positive, modulo the partition
count), so a batch lands exactly where single-event producers would put each of its events.
confluent-kafka does the same only with ``partitioner=murmur2_random``; librdkafka's default
(``consistent_random``) hashes with CRC32 and places keys elsewhere.

:class:`InvalidEvent` and :class:`ProducerError` are defined here, not in
:mod:`streamproc.errors`, because only this module raises them; both derive from
:class:`~streamproc.errors.StreamprocError`.

Examples
--------
>>> default_partition("3f2a9c1e-7b7d-4c53-9d0e-5b1f7f8a2c41", 6)
0
>>> encode_event(Label, {"prediction_id": "p1", "label": True})
b'{"prediction_id":"p1","label":true}'
>>> event = {"prediction_id": "p1", "model_id": "m", "model_version": "1", "prediction": 0.5}
>>> encode_event(Prediction, {**event, "confidence": 1.2})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamproc.sdk.producer.InvalidEvent: prediction 'p1': confidence: ... [schema:...:out_of_range]
"""

from __future__ import annotations

import atexit
import logging
import struct
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from math import isfinite
from typing import Any, Protocol

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer

from streamproc.config import Config, load_config
from streamproc.contracts import Label, Prediction, decode_message, event_time
from streamproc.errors import StreamprocError, TopicError

__all__ = [
    "InvalidEvent",
    "PredictionLogger",
    "ProducerError",
    "default_partition",
    "encode_event",
    "murmur2",
]

log = logging.getLogger(__name__)

OnDelivery = Callable[[KafkaError | None, int], object]
"""``on_delivery(error, number_of_events)``, called once per Kafka message."""

# Room for the key (a prediction_id of up to 512 characters, 2 KiB of UTF-8) and the record and
# record-batch headers, below librdkafka's ``message.max.bytes`` that bounds key + value.
_RECORD_OVERHEAD = 4096
_LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000
_METADATA_MAX_AGE_S = 300.0  # as librdkafka's topic.metadata.refresh.interval.ms
_METADATA_RETRY_S = 5.0
_NEW_TOPIC_GRACE_S = 2.0  # how long a missing topic is looked for before TopicError
_MAX_WAIT_S = 0.1  # the linger thread wakes at least this often, so close() never waits long
_MAX_BLOCK_S = 10.0  # how long log() waits for room when librdkafka's queue is full
# Delivery errors after which the cached partition count may be wrong.
_STALE_METADATA = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC}
)


class InvalidEvent(StreamprocError, ValueError):
    """An event the worker would dead-letter, refused at the producer before it is sent.

    Parameters
    ----------
    kind
        ``"prediction"`` or ``"label"``.
    prediction_id
        The event's ``prediction_id`` as given (it may itself be the problem).
    field
        The offending top-level field (``features['x']`` for a value inside a mapping), or
        ``$`` for the whole event.
    reason
        The reason code the worker's dead letter would carry: ``non_finite_number``,
        ``too_large`` or ``schema:<field>:<problem>`` (see :mod:`streamproc.contracts`).
    detail
        What is wrong, in words.
    """

    def __init__(
        self, kind: str, prediction_id: object, field: str, reason: str, detail: str
    ) -> None:
        self.kind = kind
        self.prediction_id = prediction_id
        self.field = field
        self.reason = reason
        self.detail = detail
        super().__init__(f"{kind} {prediction_id!r}: {field}: {detail} [{reason}]")

    def __reduce__(self) -> tuple[type[InvalidEvent], tuple[str, object, str, str, str]]:
        # Picklable (multiprocessing model servers) despite the extra constructor arguments.
        return type(self), (self.kind, self.prediction_id, self.field, self.reason, self.detail)


class ProducerError(StreamprocError):
    """The logger cannot send: it is closed, or Kafka's metadata cannot be read."""


# -- partitioning ---------------------------------------------------------------------------


_UNPACKERS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def _murmur2(data: bytes) -> int:
    """Kafka's murmur2 as an unsigned 32-bit integer (the hot-path form of :func:`murmur2`)."""
    m = 0x5BD1E995
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    if words:
        unpack = _UNPACKERS.get(words)
        if unpack is None:
            unpack = _UNPACKERS[words] = struct.Struct(f"<{words}I").unpack_from
        for k in unpack(data):
            k = (k * m) & 0xFFFFFFFF
            h = ((h * m) ^ (k ^ (k >> 24)) * m) & 0xFFFFFFFF
    tail = length & 3
    if tail:
        i = length - tail
        if tail == 3:
            h ^= data[i + 2] << 16
        if tail >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data``: the signed ``int`` Java's ``Utils.murmur2`` returns.

    Parameters
    ----------
    data
        The key bytes.

    Returns
    -------
    int
        The hash in ``[-2**31, 2**31)``.

    Examples
    --------
    >>> murmur2(b"21"), murmur2(b"foobar"), murmur2(b"abc")
    (-973932308, -790332482, 479470107)
    """
    h = _murmur2(bytes(data))
    return h - (1 << 32) if h & 0x80000000 else h


def default_partition(key: str | bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with ``key``.

    ``toPositive(murmur2(key)) % num_partitions``, as the Java client's ``BuiltInPartitioner``
    (and librdkafka's ``murmur2_random`` partitioner) compute it. A ``str`` key is hashed as
    its UTF-8 bytes.

    Parameters
    ----------
    key
        The record key: here always a ``prediction_id``.
    num_partitions
        The topic's partition count.

    Returns
    -------
    int
        A partition in ``range(num_partitions)``.

    Examples
    --------
    >>> [default_partition(k, 6) for k in ("21", "foobar", "abc", "pred-000042")]
    [0, 0, 3, 5]
    >>> default_partition("pred-000042", 7)
    3
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if isinstance(key, str):
        key = key.encode()
    return (_murmur2(key) & 0x7FFFFFFF) % num_partitions


# -- validation and encoding ----------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    # numpy and torch scalars are what models hand out: send them as the numbers they hold.
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    raise TypeError(
        f"a {type(obj).__module__}.{type(obj).__qualname__} cannot be sent; "
        "use str, float, int, bool or None"
    )


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="number")
_KIND = {Prediction: "prediction", Label: "label"}
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {k: msgspec.json.Decoder(k) for k in _KIND}


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not isfinite(value)
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        return _non_finite(value.item())
    return False


def _find_non_finite(event: Mapping[str, Any]) -> tuple[str, Any] | None:
    for name, value in event.items():
        if isinstance(value, Mapping):
            for key, inner in value.items():
                if _non_finite(inner):
                    return f"{name}[{key!r}]", inner
        elif _non_finite(value):
            return name, value
    return None


def _unencodable(kind: str, event: Mapping[str, Any], exc: Exception) -> InvalidEvent:
    """Name the value msgspec could not encode (a rare path: each value is tried alone)."""
    where, top = "$", "$"
    for name, value in event.items():
        values = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, inner in values:
            try:
                _ENCODER.encode(inner)
            except (TypeError, ValueError, OverflowError):
                where, top = (name if key is None else f"{name}[{key!r}]"), name
                break
        if top != "$":
            break
    return InvalidEvent(
        kind, event.get("prediction_id"), where, f"schema:{top}:wrong_type", str(exc)
    )


def encode_event(
    kind: type[Prediction] | type[Label],
    event: Mapping[str, Any],
    *,
    max_bytes: int = 1_048_576,
    validate: bool = True,
) -> bytes:
    """Encode one event as compact JSON and check it exactly as the worker will.

    The encoded bytes are decoded with the Struct the worker decodes with, and a refused
    event is classified by :func:`streamproc.contracts.decode_message`, so it carries the
    reason code the worker's dead letter would carry. Non-finite floats are refused as
    ``non_finite_number``: msgspec would write them as ``null``, silently turning a NaN feature
    into a missing one. numpy/torch scalars and ``Decimal`` are sent as plain numbers.

    Parameters
    ----------
    kind
        :class:`~streamproc.contracts.Prediction` or :class:`~streamproc.contracts.Label`.
    event
        The event's fields, as JSON-ready Python values.
    max_bytes
        The largest encoded event accepted (the worker's ``max_message_bytes`` by default).
    validate
        ``False`` skips the checks (only an event over ``max_bytes`` is refused).

    Returns
    -------
    bytes
        The event as one JSON object.

    Raises
    ------
    InvalidEvent
        Naming the field, the problem and the worker's reason code.

    Examples
    --------
    >>> encode_event(Label, {"prediction_id": "p1", "label": 1, "timestamp": 1704067200.0})
    b'{"prediction_id":"p1","label":1,"timestamp":1704067200.0}'
    >>> encode_event(Label, {"prediction_id": "p1", "label": float("nan")})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamproc.sdk.producer.InvalidEvent: label 'p1': label: nan is not ... [non_finite_number]
    """
    name = _KIND[kind]
    try:
        data = _ENCODER.encode(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _unencodable(name, event, exc) from None
    if not validate:
        if len(data) > max_bytes:
            raise InvalidEvent(
                name,
                event.get("prediction_id"),
                "$",
                "too_large",
                f"{len(data)} bytes exceeds the {max_bytes}-byte limit",
            )
        return data
    # msgspec writes NaN and Infinity as null, so only an event with a null can hide one.
    if b"null" in data:
        found = _find_non_finite(event)
        if found is not None:
            where, value = found
            raise InvalidEvent(
                name,
                event.get("prediction_id"),
                where,
                "non_finite_number",
                f"{value!r} is not a JSON number (NaN and Infinity are not allowed)",
            )
    if len(data) <= max_bytes:
        try:
            _DECODERS[kind].decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            return data
    # Refused: ask the worker's decoder why, so the reason code is the one it would give.
    rejection = decode_message(data, kind, max_bytes=max_bytes).rejections[0]
    field = "$"
    if rejection.reason.startswith("schema:"):
        field = rejection.reason.split(":")[1]
        if field == "$":  # the decoder's reason keeps no path here; its message does
            field = _path_in(rejection.message) or "$"
    raise InvalidEvent(name, event.get("prediction_id"), field, rejection.reason, rejection.message)


def _path_in(message: str) -> str | None:
    start = message.find("`$.")
    if start < 0:
        return None
    rest = message[start + 3 :]
    end = min((i for i in (rest.find(c) for c in "`[.") if i >= 0), default=len(rest))
    return rest[:end] or None


# -- the logger -----------------------------------------------------------------------------


class _ProducerLike(Protocol):
    def produce(self, topic: str, value: bytes, key: bytes, *args: Any, **kwargs: Any) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


class _Group:
    """Encoded events waiting for one (topic, partition), oldest first."""

    __slots__ = ("born", "key", "parts", "size")

    def __init__(self, key: bytes, born: float) -> None:
        self.key = key  # the first event's prediction_id: it hashes to this partition
        self.born = born
        self.parts: list[bytes] = []
        self.size = 1  # "[" plus, per event, its bytes and a "," or "]"


_LIVE: weakref.WeakSet[PredictionLogger] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for logger in list(_LIVE):
        left = logger.close(timeout=5.0)
        log.warning(
            "a PredictionLogger was not closed; closed it at exit, %d events undelivered", left
        )


class PredictionLogger:
    """Send predictions and labels to Kafka from a model server, validated and batched.

    Events are grouped per destination partition; a group is sent as one message (a JSON array
    of events) when it holds ``batch_size`` events, when adding an event would take it over the
    message size limit, or when its oldest event is ``linger_ms`` old. A daemon thread sends
    lingering groups and serves delivery reports, so the caller never has to poll. ``log`` and
    ``label`` are thread-safe.

    A batch message's key is the ``prediction_id`` of its first event. Every event of a batch
    hashes to the batch's partition, so this key sends the message to the partition it is on
    under Kafka's default partitioner: tools that re-derive the partition from the key (a
    MirrorMaker copy, a repartitioning job, a replay through another client) keep each event
    where single-event producers would have put it, and the key names a real event.

    Parameters
    ----------
    config
        Where Kafka is, how to authenticate (SASL/TLS from ``config.kafka``) and the topic
        names. Default: :func:`streamproc.config.load_config`.
    batch_size
        Events per message, at most ``config.worker.max_batch_events``. ``1`` sends each event
        alone as a plain JSON object; otherwise every message is a JSON array.
    linger_ms
        How long the oldest event of a group may wait for company. ``0`` sends at once.
    on_delivery
        Called as ``on_delivery(error, number_of_events)`` once per message, with ``error``
        ``None`` on success or the :class:`confluent_kafka.KafkaError`. It runs on the
        logger's thread or inside :meth:`flush`/:meth:`log` (while they wait for room), so it
        must be quick and thread-safe. Without it, failures are logged at ERROR level.
        Either way they are counted.
    validate
        Check each event (see :func:`encode_event`). ``False`` saves a few microseconds per
        event; bad events are then dead-lettered by the worker, and NaN is sent as ``null``.
    settings
        Extra librdkafka settings, applied over ``config.kafka.librdkafka()`` and this class's
        defaults (``enable.idempotence=true`` so retries neither duplicate nor reorder a batch,
        ``allow.auto.create.topics=false`` so a typo in a topic name is an error, not a new
        one-partition topic).
    max_message_bytes
        The largest message value sent. Default: the smaller of the worker's
        ``max_message_bytes`` and what librdkafka's ``message.max.bytes`` leaves for a value.
    producer
        An existing producer to send with, e.g. one shared with other code; ``settings`` are
        then ignored and :meth:`close` leaves it open.

    Attributes
    ----------
    delivered_events, failed_events, failed_messages : int
        Delivery outcomes so far (a failed message fails all its events).
    last_error : confluent_kafka.KafkaError or None
        The most recent delivery error.

    Examples
    --------
    With a Kafka running and the topics created (``streamproc topics apply``)::

        with PredictionLogger(load_config()) as logger:
            logger.log(prediction_id="p-1", model_id="fraud", model_version="3",
                       features={"amount": 12.5, "country": "DE"}, prediction=0.93)
            logger.label(prediction_id="p-1", label=True)
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        batch_size: int = 500,
        linger_ms: float = 50.0,
        on_delivery: OnDelivery | None = None,
        validate: bool = True,
        settings: Mapping[str, Any] | None = None,
        max_message_bytes: int | None = None,
        producer: _ProducerLike | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        max_batch = self.config.worker.max_batch_events
        if not 1 <= batch_size <= max_batch:
            raise ValueError(
                f"batch_size must be between 1 and worker.max_batch_events ({max_batch}), "
                f"got {batch_size}: the worker rejects larger batches as too_large"
            )
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms}")
        conf: dict[str, Any] = {
            **self.config.kafka.librdkafka(),
            "client.id": "streamproc-producer",
            "enable.idempotence": True,
            "allow.auto.create.topics": False,
            **(settings or {}),
        }
        if max_message_bytes is None:
            librdkafka_max = int(conf.get("message.max.bytes", _LIBRDKAFKA_MESSAGE_MAX_BYTES))
            max_message_bytes = min(
                self.config.worker.max_message_bytes, librdkafka_max - _RECORD_OVERHEAD
            )
        if max_message_bytes < 64:
            raise ValueError(f"max_message_bytes must be >= 64, got {max_message_bytes}")
        self._owns_producer = producer is None
        self._producer: _ProducerLike = producer if producer is not None else Producer(conf)
        self._batch_size = batch_size
        self._single = batch_size == 1
        self._linger_s = linger_ms / 1000.0
        self._on_delivery = on_delivery
        self._validate = validate
        self._max_value = max_message_bytes
        # An event must fit alone, with the brackets of an array around it.
        self._max_event = max_message_bytes if self._single else max_message_bytes - 2
        self._predictions = self.config.topics.predictions
        self._labels = self.config.topics.labels

        self._lock = threading.RLock()  # RLock: on_delivery may log() from inside a wait
        self._groups: dict[tuple[str, int], _Group] = {}
        self._buffered = 0
        self._closed = False
        self._released = False  # the owned producer is closed: never call it again
        self._partitions: dict[str, tuple[int, float]] = {}

        self._stats_lock = threading.Lock()
        self._in_flight = 0
        self.delivered_events = 0
        self.failed_events = 0
        self.failed_messages = 0
        self.last_error: KafkaError | None = None

        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="streamproc-producer-linger", daemon=True
        )
        self._thread.start()
        _LIVE.add(self)

    # -- public API -------------------------------------------------------------------------

    def log(
        self,
        *,
        prediction_id: str,
        model_id: str,
        model_version: str,
        features: Mapping[str, float | int | str | bool | None],
        prediction: float | int | str | bool,
        scores: Mapping[str, float] | None = None,
        confidence: float | None = None,
        segments: Mapping[str, str] | None = None,
        latency_ms: float | None = None,
        timestamp: datetime | float | str | None = None,
    ) -> None:
        """Queue one ``prediction.v1`` event for the predictions topic.

        Parameters
        ----------
        prediction_id, model_id, model_version
            Non-empty strings of at most 512 characters; ``prediction_id`` is the join key
            with labels and the Kafka key.
        features
            Feature name to number, string, boolean or ``None`` (missing).
        prediction
            The model's output: number, string or boolean.
        scores
            Class to probability, each in [0, 1].
        confidence
            In [0, 1].
        segments
            Dimension to value (``{"country": "DE"}``), for per-segment monitoring.
        latency_ms
            Serving latency, >= 0.
        timestamp
            Event time: an aware ``datetime`` (a naive one is taken as UTC, as the worker
            does), Unix epoch seconds, or an RFC 3339 string. ``None`` stamps the current
            time, so event time never depends on when Kafka received the message.

        Raises
        ------
        InvalidEvent
            The event breaks the contract; nothing is queued.
        ProducerError
            The logger is closed, or the topic's metadata cannot be read.
        streamproc.errors.TopicError
            The predictions topic does not exist.
        """
        event: dict[str, Any] = {
            "prediction_id": prediction_id,
            "model_id": model_id,
            "model_version": model_version,
            "timestamp": time.time() if timestamp is None else _event_time(timestamp),
            "features": features,
            "prediction": prediction,
        }
        if scores is not None:
            event["scores"] = scores
        if confidence is not None:
            event["confidence"] = confidence
        if segments is not None:
            event["segments"] = segments
        if latency_ms is not None:
            event["latency_ms"] = latency_ms
        self._add(self._predictions, Prediction, prediction_id, event)

    def label(
        self,
        *,
        prediction_id: str,
        label: float | int | str | bool,
        model_id: str | None = None,
        timestamp: datetime | float | str | None = None,
    ) -> None:
        """Queue one ``label.v1`` event (the ground truth of a prediction) for the labels topic.

        Parameters
        ----------
        prediction_id
            The prediction this label belongs to.
        label
            The true outcome: number, string or boolean.
        model_id
            Optional; helps when one ``prediction_id`` space serves several models.
        timestamp
            As for :meth:`log`; ``None`` stamps the current time.

        Raises
        ------
        InvalidEvent, ProducerError, streamproc.errors.TopicError
            As for :meth:`log`.
        """
        event: dict[str, Any] = {
            "prediction_id": prediction_id,
            "timestamp": time.time() if timestamp is None else _event_time(timestamp),
            "label": label,
        }
        if model_id is not None:
            event["model_id"] = model_id
        self._add(self._labels, Label, prediction_id, event)

    def flush(self, timeout: float = 10.0) -> int:
        """Send every waiting group and wait up to ``timeout`` seconds for their delivery.

        Parameters
        ----------
        timeout
            Seconds to wait for delivery reports.

        Returns
        -------
        int
            Events neither delivered nor failed yet (0 when everything is accounted for).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._released:
                return self.outstanding_events
            for slot, group in list(self._groups.items()):
                self._send(slot, group)
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        return self.outstanding_events

    def close(self, timeout: float = 10.0) -> int:
        """Stop the thread, flush, and release the producer. Further ``log`` calls raise.

        Events still undelivered after ``timeout`` are purged from librdkafka's queue and
        counted (and reported to ``on_delivery``) as failed, so none is lost without notice;
        with a ``producer`` passed in, they are left in its queue instead.

        Parameters
        ----------
        timeout
            Seconds to wait for delivery.

        Returns
        -------
        int
            Events that were still outstanding at the deadline.
        """
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
        _LIVE.discard(self)
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self.flush(max(0.0, deadline - time.monotonic()))
        if left and self._owns_producer:
            purge = getattr(self._producer, "purge", None)
            if purge is not None:
                purge()
                self._producer.flush(1.0)  # serves the purged messages' failure reports
        if self._owns_producer:
            with self._lock:
                self._released = True
            closer = getattr(self._producer, "close", None)  # absent in older confluent-kafka
            if closer is not None:
                closer()
        if left:
            log.warning("PredictionLogger closed with %d events undelivered", left)
        return left

    def __enter__(self) -> PredictionLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def buffered_events(self) -> int:
        """Events waiting in a group, not yet handed to librdkafka."""
        return self._buffered

    @property
    def in_flight_events(self) -> int:
        """Events handed to librdkafka whose delivery is not known yet."""
        return self._in_flight

    @property
    def outstanding_events(self) -> int:
        """Events neither delivered nor failed: buffered plus in flight."""
        return self._buffered + self._in_flight

    def partition_for(self, prediction_id: str, topic: str | None = None) -> int:
        """The partition an event with ``prediction_id`` goes to (default: predictions topic)."""
        topic = topic or self._predictions
        return default_partition(prediction_id, self._partition_count(topic))

    # -- internals --------------------------------------------------------------------------

    def _add(
        self, topic: str, kind: type[Any], prediction_id: object, event: dict[str, Any]
    ) -> None:
        if self._closed:
            raise ProducerError("PredictionLogger is closed")
        data = encode_event(kind, event, max_bytes=self._max_event, validate=self._validate)
        if not isinstance(prediction_id, str):  # only reachable with validate=False
            raise InvalidEvent(
                _KIND[kind],
                prediction_id,
                "prediction_id",
                "schema:prediction_id:wrong_type",
                f"prediction_id must be a str, got {type(prediction_id).__name__}",
            )
        key = prediction_id.encode()
        slot = (topic, (_murmur2(key) & 0x7FFFFFFF) % self._partition_count(topic))
        size = len(data) + 1
        with self._lock:
            if self._closed:
                raise ProducerError("PredictionLogger is closed")
            group = self._groups.get(slot)
            if group is not None and group.size + size > self._max_value:
                self._send(slot, group)
                group = None
            if group is None:
                group = self._groups[slot] = _Group(key, time.monotonic())
            group.parts.append(data)
            group.size += size
            self._buffered += 1
            if len(group.parts) >= self._batch_size or not self._linger_s:
                self._send(slot, group)

    def _send(self, slot: tuple[str, int], group: _Group) -> None:
        """Produce one group as one message. Call with ``self._lock`` held."""
        del self._groups[slot]
        n = len(group.parts)
        self._buffered -= n
        value = group.parts[0] if self._single else b"[" + b",".join(group.parts) + b"]"
        topic, partition = slot
        report = partial(self._delivered, topic, n)
        with self._stats_lock:
            self._in_flight += n
        waited_since = None
        while True:
            try:
                self._producer.produce(
                    topic, value, group.key, partition=partition, on_delivery=report
                )
                return
            except BufferError:
                # librdkafka's queue is full: wait for deliveries to make room (backpressure,
                # like the Java client's max.block.ms), then give the message up as failed.
                now = time.monotonic()
                waited_since = waited_since or now
                if now - waited_since > _MAX_BLOCK_S:
                    report(KafkaError(KafkaError._QUEUE_FULL, "local queue full"), None)
                    return
                self._producer.poll(0.05)
            except KafkaException as exc:
                report(exc.args[0], None)
                return

    def _delivered(self, topic: str, n: int, err: KafkaError | None, _msg: object) -> None:
        with self._stats_lock:
            self._in_flight -= n
            if err is None:
                self.delivered_events += n
            else:
                self.failed_events += n
                self.failed_messages += 1
                self.last_error = err
        if err is not None:
            if err.code() in _STALE_METADATA:
                self._partitions.pop(topic, None)
            if self._on_delivery is None:
                log.error("%d events to %s failed: %s", n, topic, err)
        if self._on_delivery is not None:
            try:
                self._on_delivery(err, n)
            except Exception:
                log.exception("on_delivery callback raised; the delivery is counted regardless")

    def _partition_count(self, topic: str) -> int:
        cached = self._partitions.get(topic)
        now = time.monotonic()
        if cached is not None and now < cached[1]:
            return cached[0]
        try:
            count = self._read_partition_count(topic)
        except StreamprocError:
            if cached is None:
                raise
            # Keep using what we knew (partitions are never removed); ask again soon.
            log.warning("metadata of topic %r unavailable; using %d partitions", topic, cached[0])
            self._partitions[topic] = (cached[0], now + _METADATA_RETRY_S)
            return cached[0]
        self._partitions[topic] = (count, time.monotonic() + _METADATA_MAX_AGE_S)
        return count

    def _read_partition_count(self, topic: str) -> int:
        bootstrap = self.config.kafka.bootstrap
        # A topic created moments ago may not be in every broker's metadata yet.
        deadline = time.monotonic() + _NEW_TOPIC_GRACE_S
        while True:
            try:
                meta = self._producer.list_topics(topic, timeout=10.0).topics.get(topic)
            except KafkaException as exc:
                raise ProducerError(
                    f"cannot read metadata of topic {topic!r} from {bootstrap}: {exc}"
                ) from None
            if meta is not None and meta.error is None and meta.partitions:
                return len(meta.partitions)
            if time.monotonic() > deadline:
                why = meta.error if meta is not None else "absent from metadata"
                raise TopicError(
                    f"topic {topic!r} is not available on {bootstrap} ({why}); "
                    "create the topics with `streamproc topics apply`"
                )
            time.sleep(0.1)

    def _flush_due(self) -> float:
        """Send groups older than linger; return how long the thread may sleep."""
        wait = min(self._linger_s, _MAX_WAIT_S) if self._linger_s else _MAX_WAIT_S
        with self._lock:
            now = time.monotonic()
            for slot, group in list(self._groups.items()):
                left = group.born + self._linger_s - now
                if left <= 0:
                    self._send(slot, group)
                else:
                    wait = min(wait, left)
        return max(wait, 0.001)

    def _run(self) -> None:
        # A group born while we sleep has a later deadline than any group we know of, so
        # sleeping until the earliest known deadline (at most linger) never sends late.
        while not self._stop.is_set():
            try:
                self._producer.poll(self._flush_due())
            except Exception:  # never let the linger thread die silently
                log.exception("PredictionLogger background thread error")
                self._stop.wait(_MAX_WAIT_S)


def _event_time(timestamp: datetime | float | str) -> Any:
    """Datetimes become epoch seconds (naive = UTC, as the worker reads them); others pass."""
    if isinstance(timestamp, datetime):
        return event_time(timestamp, None)
    return timestamp
