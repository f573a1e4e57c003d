"""The limit loop: the worker's required work, hand-written, as the yardstick of its CPU per event.

Run (``bench/pipeline_throughput.py`` does, on a worker's topics and with a worker's settings):

    STREAMPROC_TOPICS_PREDICTIONS=... STREAMPROC_REDIS_KEY_PREFIX=... \\
        .venv/bin/python bench/limit_loop.py --predictions 50000 --labels 50000

It reads the ``STREAMPROC_*`` configuration as ``streamproc worker`` does (topics, consumer
group ``worker.app_id``, Redis and its key prefix, ``worker.batch_size`` and
``batch_within_s``, the join's TTLs, ``monitoring.tick_s``/``lateness_s``) and, per batch, does
what any implementation of the worker must do, and no more:

1. consume ``consume(num_messages=batch_size, timeout=batch_within_s)`` from both input topics;
2. decode every message with the project's decoder (:func:`streamproc.contracts.decode_message`
   into :class:`~streamproc.contracts.Prediction` / :class:`~streamproc.contracts.Label`);
3. join in Redis, one pipeline per batch: a prediction ``SET``\\ s its small record (model,
   version, prediction, segments) with the prediction TTL and ``GETDEL``\\ s a waiting label; a
   label ``SET``\\ s its own (label, event time) with the label TTL and ``GETDEL``\\ s the
   prediction. Whichever half comes second finds the other: one join per pair, in either
   arrival order;
4. fold with numpy into per-(model, version, segment key, tick) partials: the segment keys of
   the model's stored baseline (all traffic, and one per value of each dimension, other values
   as ``__other__``); each numeric feature binned with ``np.searchsorted`` into that segment's
   reference edges and counted with one ``np.bincount`` per segment key, plus its sum; each
   categorical feature counted per group (the reference's categories, and any other value);
   joined labels counted (labelled, correct) in the group of their label's tick. Partials of
   ticks ``lateness_s`` behind the newest are handed on (here: dropped, their rows counted);
5. commit the batch's offsets (asynchronously).

Its CPU is its own (``time.process_time()``: every thread of the process, librdkafka's
included), its wall time from the first message received to the end of the batch that brought
the last expected event. It stops once ``--predictions`` + ``--labels`` events were decoded and
prints one JSON object (:class:`Result`).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import hiredis
import msgspec
import numpy as np
import redis
from confluent_kafka import Consumer

from streamproc.baseline import ALL, BaselineStore, NumericReference, category_value
from streamproc.config import Config, load_config
from streamproc.contracts import Label, Prediction, decode_message, event_time

OTHER = "__other__"
_PACK = msgspec.msgpack.Encoder()
_PREDICTION = msgspec.msgpack.Decoder(tuple[str, str, Any, dict[str, str]])
_LABEL = msgspec.msgpack.Decoder(tuple[Any, float])

# A joined pair: (model, version, prediction, segments), label, label event time.
Pair = tuple[tuple[str, str, Any, dict[str, str]], Any, float]
ModelVersion = tuple[str, str]


@dataclass
class Reference:
    """What the fold needs of one model version's stored baseline."""

    numeric: list[str]
    categories: dict[str, dict[str, int]]  # categorical feature -> reference category -> code
    values: dict[str, list[str]]  # segment dimension -> the values with a segment of their own
    edges: dict[str, list[np.ndarray]]  # segment key -> reference edges per numeric feature

    @classmethod
    def load(cls, store: BaselineStore, mv: ModelVersion, cfg: Config) -> Reference:
        """The stored baseline of ``mv``, narrowed as ``cfg.monitoring`` says (none: empty)."""
        profile = store.get(*mv)
        if profile is None:
            return cls([], {}, {}, {})
        watched, dims = cfg.monitoring.features, cfg.monitoring.segment_dims
        columns = profile.segments[ALL].features
        columns = {k: v for k, v in columns.items() if watched is None or k in watched}
        numeric = [k for k, v in columns.items() if isinstance(v, NumericReference)]
        categories = {
            k: {c: i for i, c in enumerate(v.probs)} for k, v in columns.items() if k not in numeric
        }
        edges = {
            key: [np.asarray(getattr(seg.features.get(k), "edges", ()), float) for k in numeric]
            for key, seg in profile.segments.items()
        }
        values = profile.segment_values()
        values = {d: sorted(v) for d, v in values.items() if dims is None or d in dims}
        return cls(numeric, categories, values, edges)

    def segment_rows(self, segments: Sequence[dict[str, str]]) -> Iterator[tuple[str, np.ndarray]]:
        """Each segment key these events feed, with their row numbers.

        >>> ref = Reference([], {}, {"country": ["DE", "FR"]}, {})
        >>> rows = ref.segment_rows([{"country": "FR"}, {}, {"country": "IT"}])
        >>> [(key, r.tolist()) for key, r in rows]
        [('all', [0, 1, 2]), ('country=FR', [0]), ('country=__other__', [2])]
        """
        yield ALL, np.arange(len(segments))
        for dim, known in self.values.items():
            keys = [f"{dim}={v}" for v in (*known, OTHER)]
            code = {v: i for i, v in enumerate(known)}
            other, absent = len(known), len(known) + 1
            codes = np.array([code.get(s[dim], other) if dim in s else absent for s in segments])
            for c in np.unique(codes):
                if c != absent:
                    yield keys[c], np.flatnonzero(codes == c)


@dataclass
class Partial:
    """The sketches of one (model, version, segment key, tick)."""

    rows: int = 0
    hist: Any = 0  # numeric feature x (reference bins, then a null bin)
    sums: Any = 0  # numeric feature -> sum of its non-null values
    cats: Any = 0  # categorical feature x (reference categories, then any other) -> count
    labelled: int = 0
    correct: int = 0


def numeric_matrix(features: Sequence[dict[str, Any]], names: Sequence[str]) -> np.ndarray:
    """Events x ``names`` as floats; a missing, null or non-numeric value is NaN.

    >>> numeric_matrix([{"a": 1, "b": None}, {"a": "x"}], ["a", "b"]).tolist()
    [[1.0, nan], [nan, nan]]
    """
    try:
        get = operator.itemgetter(*names)
        return np.array([get(f) for f in features], float).reshape(len(features), len(names))
    except (KeyError, TypeError, ValueError):  # a value missing or not a number: the slow way
        rows = [[v if _is_number(v) else None for v in map(f.get, names)] for f in features]
        return np.array(rows, float).reshape(len(features), len(names))


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def pipeline(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` to Redis in one write, then read their replies: a pipeline.

    redis-py's ``Pipeline`` spends ~8 µs of client CPU per command on argument handling and
    per-reply bookkeeping (measured here), more than all the rest of the loop's work per event;
    packed with hiredis and read straight off the connection, a command costs ~2 µs.
    """
    conn = client.connection_pool.get_connection()
    try:
        conn.send_packed_command([b"".join(map(hiredis.pack_command, commands))])
        return [conn.read_response() for _ in commands]
    finally:
        client.connection_pool.release(conn)


def tick_groups(ticks: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Ticks as 0-based group numbers: (groups, first tick, number of ticks)."""
    first = int(ticks.min())
    return ticks - first, first, int(ticks.max()) - first + 1


@dataclass
class Result:
    """What the loop measured and counted."""

    events: int = 0
    predictions: int = 0
    labels: int = 0
    rejected: int = 0
    joined: int = 0
    folded: int = 0  # predictions folded in (their all-traffic rows)
    closed: int = 0  # partials handed on
    batches: int = 0
    seconds: float | None = None
    cpu_s: float | None = None
    events_per_s: float | None = None
    cpu_us_per_event: float | None = None
    check: str = "ok"


class Loop:
    """Decode, join and fold batches of ``cfg``'s input topics, counting into ``result``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.redis = redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password)
        self.store = BaselineStore(self.redis, cfg.redis.key_prefix)
        self.refs: dict[ModelVersion, Reference] = {}
        self.partials: dict[tuple[ModelVersion, str, int], Partial] = {}
        self.tick_s = cfg.monitoring.tick_s
        self.newest = -(2**62)  # the newest tick seen
        self.horizon = math.ceil(cfg.monitoring.lateness_s / self.tick_s) + 1
        self.result = Result()

    def batch(self, msgs: Sequence[Any]) -> None:
        """Decode, join and fold one consumed batch."""
        preds: list[tuple[Prediction, float]] = []
        labels: list[tuple[Label, float]] = []
        for msg in msgs:
            if msg.error() is not None:
                continue
            is_prediction = msg.topic() == self.cfg.topics.predictions
            decoded = decode_message(msg.value(), Prediction if is_prediction else Label)
            self.result.rejected += len(decoded.rejections)
            out: list[Any] = preds if is_prediction else labels
            record_ms = msg.timestamp()[1]
            out.extend((e, event_time(e.timestamp, record_ms)) for e in decoded.events)
        pairs = self.join(preds, labels)
        for mv, some in group_by(preds, lambda p: (p[0].model_id, p[0].model_version)).items():
            self.fold_predictions(mv, some)
        for mv, done in group_by(pairs, lambda pair: pair[0][:2]).items():
            self.fold_outcomes(mv, done)
        self.close_ticks()
        r = self.result
        r.predictions, r.labels = r.predictions + len(preds), r.labels + len(labels)
        r.joined, r.batches = r.joined + len(pairs), r.batches + 1

    def join(
        self, preds: Sequence[tuple[Prediction, float]], labels: Sequence[tuple[Label, float]]
    ) -> list[Pair]:
        """Record the batch's events in Redis (one pipeline); return the pairs they completed."""
        p = self.cfg.redis.key_prefix
        p_ttl, l_ttl = self.cfg.join.prediction_ttl_s, self.cfg.join.label_ttl_s
        commands: list[tuple[Any, ...]] = []
        for e, _ in preds:
            record = _PACK.encode((e.model_id, e.model_version, e.prediction, e.segments))
            commands.append(("SET", f"{p}:lp:{e.prediction_id}", record, "EX", p_ttl))
            commands.append(("GETDEL", f"{p}:ll:{e.prediction_id}"))
        for e, t in labels:
            record = _PACK.encode((e.label, t))
            commands.append(("SET", f"{p}:ll:{e.prediction_id}", record, "EX", l_ttl))
            commands.append(("GETDEL", f"{p}:lp:{e.prediction_id}"))
        found = pipeline(self.redis, commands)[1::2]  # the GETDELs' replies
        pairs: list[Pair] = []
        for (e, _), blob in zip(preds, found[: len(preds)], strict=True):
            if blob is not None:
                label, t = _LABEL.decode(blob)
                pairs.append(((e.model_id, e.model_version, e.prediction, e.segments), label, t))
        for (e, t), blob in zip(labels, found[len(preds) :], strict=True):
            if blob is not None:
                pairs.append((_PREDICTION.decode(blob), e.label, t))
        return pairs

    def reference(self, mv: ModelVersion) -> Reference:
        if mv not in self.refs:
            self.refs[mv] = Reference.load(self.store, mv, self.cfg)
        return self.refs[mv]

    def partial(self, mv: ModelVersion, key: str, tick: int) -> Partial:
        p = self.partials.get((mv, key, tick))
        if p is None:
            p = self.partials[(mv, key, tick)] = Partial()
        return p

    def fold_predictions(self, mv: ModelVersion, preds: Sequence[tuple[Prediction, float]]) -> None:
        """Fold one model version's predictions of the batch into its partials."""
        ref = self.reference(mv)
        times = np.fromiter((t for _, t in preds), float, len(preds))
        ticks = np.floor(times / self.tick_s).astype(np.int64)
        self.newest = max(self.newest, int(ticks.max()))
        features = [e.features for e, _ in preds]
        x = numeric_matrix(features, ref.numeric)
        cats = np.array(
            [
                [known.get(f.get(c), len(known)) for f in features]
                for c, known in ref.categories.items()
            ],
            np.int64,
        ).reshape(len(ref.categories), len(preds))  # a value the reference lacks: the last code
        width = max(map(len, ref.categories.values()), default=0) + 1
        for key, rows in ref.segment_rows([e.segments for e, _ in preds]):
            edges = ref.edges.get(key, [])  # a segment the baseline lacks: no numeric bins
            self.fold_segment(
                mv, key, ticks[rows], x[rows, : len(edges)], edges, cats[:, rows], width
            )
        self.result.folded += len(preds)

    def fold_segment(
        self, mv: ModelVersion, key: str, ticks: np.ndarray, x: np.ndarray,
        edges: Sequence[np.ndarray], cats: np.ndarray, cat_width: int,
    ) -> None:  # fmt: skip
        """One segment key's rows: per tick, bins and sums of every numeric feature and counts
        of every categorical one, each with one ``np.bincount`` over all features and ticks."""
        groups, first, n = tick_groups(ticks)
        n_num, n_cat = len(edges), len(cats)
        width = max((len(e) for e in edges), default=0) + 2  # bins 0..len(edges), then null
        bins = np.empty((n_num, len(groups)), np.int64)
        for f, e in enumerate(edges):
            bins[f] = np.searchsorted(e, x[:, f], side="left")  # right-closed, as the sketches
        null = np.isnan(x.T)
        bins[null] = width - 1
        cell = groups * n_num + np.arange(n_num)[:, None]  # (tick, feature) of each value
        hist = np.bincount((cell * width + bins).ravel(), minlength=n * n_num * width)
        sums = np.bincount(cell.ravel(), np.where(null, 0.0, x.T).ravel(), minlength=n * n_num)
        cell = (groups * n_cat + np.arange(n_cat)[:, None]) * cat_width + cats
        counts = np.bincount(cell.ravel(), minlength=n * n_cat * cat_width)
        hist, sums = hist.reshape(n, n_num, width), sums.reshape(n, n_num)
        counts, rows = counts.reshape(n, n_cat, cat_width), np.bincount(groups, minlength=n)
        for t in np.flatnonzero(rows).tolist():
            p = self.partial(mv, key, first + t)
            p.rows += int(rows[t])
            p.hist, p.sums, p.cats = p.hist + hist[t], p.sums + sums[t], p.cats + counts[t]

    def fold_outcomes(self, mv: ModelVersion, pairs: Sequence[Pair]) -> None:
        """Count one model version's joined labels, right or wrong, per group of label tick."""
        ticks = np.floor(np.array([t for _, _, t in pairs]) / self.tick_s).astype(np.int64)
        right = np.array([category_value(p[2]) == category_value(y) for p, y, _ in pairs], float)
        for key, rows in self.reference(mv).segment_rows([p[3] for p, _, _ in pairs]):
            groups, first, n = tick_groups(ticks[rows])
            labelled = np.bincount(groups, minlength=n).tolist()
            correct = np.bincount(groups, right[rows], minlength=n).tolist()
            for t in (t for t, count in enumerate(labelled) if count):
                p = self.partial(mv, key, first + t)
                p.labelled, p.correct = p.labelled + labelled[t], p.correct + int(correct[t])

    def close_ticks(self) -> None:
        """Hand on (here: drop) the partials of ticks ``lateness_s`` behind the newest tick."""
        closed = [k for k in self.partials if k[2] < self.newest - self.horizon]
        for k in closed:
            del self.partials[k]
        self.result.closed += len(closed)


def group_by(items: Sequence[Any], key: Any) -> dict[Any, list[Any]]:
    """``items`` by ``key(item)``, in order."""
    out: dict[Any, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


def run(cfg: Config, predictions: int, labels: int, timeout: float) -> Result:
    """Consume until ``predictions`` + ``labels`` events were decoded (or ``timeout`` s)."""
    loop = Loop(cfg)
    consumer = Consumer(
        {
            **cfg.kafka.librdkafka(),
            "group.id": cfg.worker.app_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 16 * 1024 * 1024,
        }
    )
    consumer.subscribe([cfg.topics.predictions, cfg.topics.labels])
    expected = predictions + labels
    size, within = cfg.worker.batch_size, cfg.worker.batch_within_s
    r = loop.result
    started: tuple[float, float] | None = None
    deadline = time.monotonic() + timeout
    try:
        while r.predictions + r.labels + r.rejected < expected and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=size, timeout=within)
            if not msgs:
                continue
            if started is None:
                started = (time.perf_counter(), time.process_time())
            loop.batch(msgs)
            consumer.commit(asynchronous=True)
        ended = (time.perf_counter(), time.process_time())
    finally:
        consumer.close()
        loop.redis.close()
    r.events = r.predictions + r.labels
    if started is None or r.events + r.rejected < expected:
        r.check = f"timeout: {r.events}/{expected} events"
        return r
    r.seconds, r.cpu_s = ended[0] - started[0], ended[1] - started[1]
    r.events_per_s = r.events / r.seconds if r.seconds > 0 else None
    r.cpu_us_per_event = 1e6 * r.cpu_s / r.events if r.events else None
    if r.joined != labels or r.folded != predictions or r.rejected:
        r.check = f"mismatch: joined {r.joined}/{labels}, folded {r.folded}/{predictions}"
    return r


def main(argv: Sequence[str] | None = None) -> int:
    """Run once, print the :class:`Result` as JSON; 1 if it did not count everything."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--predictions", type=int, required=True, help="prediction events to expect")
    p.add_argument("--labels", type=int, required=True, help="label events to expect")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")
    p.add_argument("--config", default=None, help="YAML file, as for streamproc worker")
    args = p.parse_args(argv)
    result = run(load_config(args.config), args.predictions, args.labels, args.timeout)
    print(json.dumps(asdict(result)), flush=True)
    return 0 if result.check == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
