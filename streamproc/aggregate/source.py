"""One source partition's aggregation: open partials, their completion, their checkpoint.

A :class:`SourceAggregator` is the whole monitor state a partition-parallel agent keeps for one
source partition: its :class:`~streamproc.aggregate.clock.SourceClock` and the partials of the
ticks that are still open. Each consumed batch is folded in (:meth:`SourceAggregator.fold`);
ticks that the source's watermark has passed are complete and leave as one
:class:`~streamproc.aggregate.wire.PartialsMessage` per model (:meth:`~SourceAggregator.complete`).

Nothing here does I/O. The caller persists :meth:`~SourceAggregator.checkpoint` (only the ticks
that changed since the last one) before it lets the batch's offsets be committed, and restores
it when the partition is assigned again: a re-read message whose offset the checkpoint covers
is skipped (``last_offset``), so every event is folded exactly once.

Raw segment keys
    Partials keep each segment value as it came (``"country=DE"``); which values get a monitor
    of their own is the judge's decision. Per tick, model and dimension at most
    :data:`RAW_VALUES_CAP` values are kept apart and the rest pooled as ``dim=__other__``, in
    offset order, so one upstream sending ids as segment values cannot blow up the partials.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec
import numpy as np

from streamproc.aggregate.clock import ClockState, SourceClock, tick_start
from streamproc.aggregate.columns import Columns
from streamproc.aggregate.fold import FoldGroup, fold_outcomes, fold_predictions, prepare
from streamproc.aggregate.partials import (
    OutcomePartial,
    OutcomeState,
    TickPartial,
    TickState,
    decode_outcome,
    decode_tick,
    encode_outcome,
    encode_tick,
)
from streamproc.aggregate.wire import PartialsMessage, ProgressMessage, TickEntry
from streamproc.baseline.reference import Reference
from streamproc.config import MonitoringConfig
from streamproc.contracts import Prediction
from streamproc.errors import StateEncodingError
from streamproc.ingest.join import Joined
from streamproc.sketch import OTHER

ALL: Final = "all"
RAW_VALUES_CAP: Final = 100
_MAGIC: Final = b"SPA2"


class ReferenceLookup(Protocol):
    """Which reference bins a raw segment's events in a tick (``None``: sample them)."""

    generation: int  # the baseline store's change count these references reflect

    def lookup(
        self, model_id: str, version: str, raw_key: str, tick: float
    ) -> Reference | None: ...

    def by_fp(self, fp: str) -> Reference | None:
        """A reference this lookup handed out before, by fingerprint (a tick keeps the
        reference it started with when a newer one arrives halfway through it)."""
        ...


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted prediction at its position in the source."""

    event: Prediction
    event_time: float
    offset: int
    index: int = -1  # position in a batch message; -1 for a single-event message


@dataclass(frozen=True, slots=True)
class Completed:
    """A join completed by a message of this source (label-side or prediction-side)."""

    joined: Joined
    offset: int
    index: int = -1


def confidence_of(scores: dict[str, float] | None, confidence: float | None) -> float | None:
    """The confidence the monitors see: the largest class score, else ``confidence``.

    >>> confidence_of({"yes": 0.8, "no": 0.2}, None), confidence_of(None, 0.6)
    (0.8, 0.6)
    """
    if scores:
        return max(scores.values())
    return confidence


def raw_keys(segments: dict[str, str], dims: Sequence[str] | None) -> list[str]:
    """``"all"`` and one ``"dim=value"`` per segment dimension (sorted; only ``dims`` if set).

    >>> raw_keys({"device": "ios", "country": "DE"}, None)
    ['all', 'country=DE', 'device=ios']
    >>> raw_keys({"device": "ios", "country": "DE"}, ["country"])
    ['all', 'country=DE']
    """
    keys = [ALL]
    for dim in sorted(segments):
        if dims is None or dim in dims:
            keys.append(f"{dim}={segments[dim]}")
    return keys


class _TickStored(msgspec.Struct, array_like=True):
    predictions: list[tuple[str, str, str, TickState]] = []  # model, version, raw key, state
    outcomes: list[tuple[str, str, str, OutcomeState]] = []


class _HeadStored(msgspec.Struct, array_like=True):
    source: str
    tick_s: float
    lateness_s: float
    clock: ClockState
    last_offset: int
    last_record_s: float = -math.inf


class SourceAggregator:
    """The open partials of one source partition; see the module docstring.

    Parameters
    ----------
    source
        ``"p<partition>"`` (predictions topic) or ``"l<partition>"`` (labels topic).
    cfg
        The ``monitoring`` settings; ``tick_s`` and ``lateness_s`` are shared by every model
        of a source, the rest may be overridden per model.
    refs
        The references to bin with, by model, version and raw segment key.
    """

    def __init__(self, source: str, cfg: MonitoringConfig, refs: ReferenceLookup) -> None:
        self.source = source
        self.partition = int(source[1:])
        self.cfg = cfg
        self.refs = refs
        self.clock = SourceClock(cfg.tick_s, cfg.lateness_s)
        self.last_offset = -1
        self.last_record_s = -math.inf  # record time of its newest record (for idleness)
        # Its newest event time when its references reached the baseline store's change count
        # `noticed_generation`: everything it binned with a reference before is older.
        self.noticed_generation = 0
        self.noticed = -math.inf
        self.ticks: dict[float, dict[tuple[str, str, str], TickPartial]] = {}
        self.outcome_ticks: dict[float, dict[tuple[str, str, str], OutcomePartial]] = {}
        self._dirty: set[float] = set()
        self._gone: set[float] = set()
        self._model_cfg: dict[str, MonitoringConfig] = {}

    def model_cfg(self, model: str) -> MonitoringConfig:
        got = self._model_cfg.get(model)
        if got is None:
            got = self._model_cfg[model] = self.cfg.for_model(model)
        return got

    # -- folding ---------------------------------------------------------------------------------

    def fold(
        self,
        predictions: Sequence[Accepted],
        outcomes: Sequence[Completed],
        through_offset: int,
    ) -> Counter[str]:
        """Fold one batch of this source (offset order); return events folded per model.

        ``through_offset`` is the last offset of the batch on this source, so that a later
        re-read of it (after a crash, before the commit) is recognised and skipped.
        """
        done = self.last_offset
        preds = [a for a in predictions if a.offset > done]
        outs = [c for c in outcomes if c.offset > done]
        self.last_offset = max(self.last_offset, through_offset)
        folded: Counter[str] = Counter()
        if preds:
            p_ok, o_ok = self._admit(preds, outs)
        else:
            p_ok = np.zeros(0, bool)
            o_ok = self._admit_outcomes(outs)
        if p_ok.any():
            kept = [a for a, ok in zip(preds, p_ok.tolist(), strict=True) if ok]
            folded.update(self._fold_predictions(kept))
        if o_ok.any():
            kept_o = [c for c, ok in zip(outs, o_ok.tolist(), strict=True) if ok]
            folded.update(self._fold_outcomes(kept_o))
        return folded

    def _admit_outcomes(self, outs: Sequence[Completed]) -> np.ndarray:
        times = np.array([c.joined.label.event_time for c in outs], dtype=np.float64)
        if self.source[0] == "l":
            return self.clock.admit(times)
        # A prediction partition's clock follows its predictions only; an outcome completed
        # there is judged against the clock as of its own message.
        return self._outcomes_at(outs, times, self.clock.newest, np.zeros(0), np.zeros(0))

    def _outcomes_at(
        self,
        outs: Sequence[Completed],
        times: np.ndarray,
        newest: float,
        pred_offsets: np.ndarray,
        pred_times: np.ndarray,
    ) -> np.ndarray:
        if not outs:
            return np.zeros(0, bool)
        tick_s, lateness = self.clock.tick_s, self.clock.lateness_s
        runmax = np.maximum.accumulate(np.concatenate(([newest], pred_times)))
        at = np.searchsorted(pred_offsets, [c.offset for c in outs], side="right")
        newest_then = runmax[at]
        with np.errstate(invalid="ignore"):
            bound = np.floor((newest_then - lateness) / tick_s) * tick_s
        bound = np.nan_to_num(bound, nan=-math.inf, neginf=-math.inf)
        bound = np.maximum(bound, self._flushed_before)
        ends = np.floor(times / tick_s) * tick_s + tick_s
        ok = ends > bound
        self.clock.late += int(ok.size - np.count_nonzero(ok))
        return ok

    def _admit(
        self, preds: Sequence[Accepted], outs: Sequence[Completed]
    ) -> tuple[np.ndarray, np.ndarray]:
        times = np.array([a.event_time for a in preds], dtype=np.float64)
        self._flushed_before = self.clock.flushed_until
        newest = self.clock.newest
        p_ok = self.clock.admit(times)
        if not outs:
            return p_ok, np.zeros(0, bool)
        o_times = np.array([c.joined.label.event_time for c in outs], dtype=np.float64)
        offsets = np.array([a.offset for a in preds], dtype=np.int64)
        return p_ok, self._outcomes_at(outs, o_times, newest, offsets, times)

    _flushed_before = -math.inf

    def _partial(
        self, tick: float, model: str, version: str, key: str, cap: Callable[[str], str]
    ) -> tuple[TickPartial, Reference | None]:
        cell = self.ticks.setdefault(tick, {})
        key = cap(key)
        p = cell.get((model, version, key))
        ref = self.refs.lookup(model, version, key, tick)
        if p is None:
            p = cell[(model, version, key)] = TickPartial()
            prepare(p, ref)
        elif p.fp != (None if ref is None else ref.fp):
            ref = None if p.fp is None else self.refs.by_fp(p.fp)
            if ref is None and p.fp is not None:
                raise StateEncodingError(f"reference {p.fp} of an open tick is not known")
        return p, ref

    def _capper(self, tick: float, model: str) -> Callable[[str], str]:
        """Map a raw key to itself, or to ``dim=__other__`` past the per-tick value cap."""
        cell = self.ticks.get(tick, {})
        seen: dict[str, set[str]] = {}
        for m, _, key in cell:
            if m == model and key != ALL:
                dim, _, value = key.partition("=")
                seen.setdefault(dim, set()).add(value)

        def cap(key: str) -> str:
            if key == ALL:
                return key
            dim, _, value = key.partition("=")
            values = seen.setdefault(dim, set())
            if value in values:
                return key
            if len(values) >= RAW_VALUES_CAP:
                values.add(OTHER)
                return f"{dim}={OTHER}"
            values.add(value)
            return key

        return cap

    def _fold_predictions(self, kept: Sequence[Accepted]) -> Counter[str]:
        tick_s = self.clock.tick_s
        ticks = (np.floor(np.array([a.event_time for a in kept]) / tick_s) * tick_s).tolist()
        rows: dict[tuple[str, str, str, float], list[int]] = {}
        keys_cache: dict[tuple[Any, ...], list[str]] = {}
        folded: Counter[str] = Counter()
        for i, (a, tick) in enumerate(zip(kept, ticks, strict=True)):
            ev = a.event
            ck = (ev.model_id, *ev.segments.items())
            keys = keys_cache.get(ck)
            if keys is None:
                dims = self.model_cfg(ev.model_id).segment_dims
                keys = keys_cache[ck] = raw_keys(ev.segments, dims)
            for key in keys:
                rows.setdefault((ev.model_id, ev.model_version, key, tick), []).append(i)
            folded[ev.model_id] += 1
        by_k: dict[int, list[FoldGroup]] = {}
        cappers: dict[tuple[float, str], Callable[[str], str]] = {}
        merged: dict[int, FoldGroup] = {}
        for (model, version, key, tick), idx in rows.items():
            capper = cappers.get((tick, model))
            if capper is None:
                capper = cappers[(tick, model)] = self._capper(tick, model)
            p, ref = self._partial(tick, model, version, key, capper)
            g = merged.get(id(p))
            if g is None:  # several raw values pooled into one partial: one group
                g = merged[id(p)] = FoldGroup(p, ref, np.asarray(idx, dtype=np.int64))
                by_k.setdefault(self.model_cfg(model).warmup_sample, []).append(g)
            else:
                g.idx = np.sort(np.concatenate([g.idx, np.asarray(idx, dtype=np.int64)]))
            self._dirty.add(tick)
        cols = Columns(
            [a.event.features for a in kept],
            [a.event.prediction for a in kept],
            [confidence_of(a.event.scores, a.event.confidence) for a in kept],
            [a.event.latency_ms for a in kept],
            self.partition,
            [a.offset for a in kept],
            [a.index for a in kept],
        )
        for sample_k, gs in by_k.items():
            fold_predictions(cols, gs, sample_k)
        return folded

    def _fold_outcomes(self, kept: Sequence[Completed]) -> Counter[str]:
        tick_s = self.clock.tick_s
        items = []
        folded: Counter[str] = Counter()
        for c in kept:
            rec, label = c.joined.prediction, c.joined.label
            tick = tick_start(label.event_time, tick_s)
            cell = self.outcome_ticks.setdefault(tick, {})
            conf = confidence_of(rec.scores, rec.confidence)
            dims = self.model_cfg(rec.model_id).segment_dims
            for key in raw_keys(rec.segments, dims):
                p = cell.get((rec.model_id, rec.model_version, key))
                if p is None:
                    p = cell[(rec.model_id, rec.model_version, key)] = OutcomePartial()
                items.append((p, rec.prediction, label.label, conf))
            self._dirty.add(tick)
            folded[rec.model_id] += 1
        fold_outcomes(items)
        return folded

    # -- completion ------------------------------------------------------------------------------

    def complete(self) -> list[PartialsMessage]:
        """Take every tick the watermark has passed: one message per model, ticks in order."""
        until = self.clock.flushed_until
        tick_s = self.clock.tick_s
        done = sorted(
            {t for t in self.ticks if t + tick_s <= until}
            | {t for t in self.outcome_ticks if t + tick_s <= until}
        )
        if not done:
            return []
        by_model: dict[str, dict[float, TickEntry]] = {}
        for t in done:
            preds = self.ticks.pop(t, {})
            outs = self.outcome_ticks.pop(t, {})
            per: dict[str, tuple[list[Any], list[Any]]] = {}
            for (model, version, key), p in sorted(preds.items()):
                per.setdefault(model, ([], []))[0].append((version, key, encode_tick(p)))
            for (model, version, key), o in sorted(outs.items()):
                per.setdefault(model, ([], []))[1].append((version, key, encode_outcome(o)))
            for model, (p_items, o_items) in per.items():
                by_model.setdefault(model, {})[t] = TickEntry(t, p_items, o_items)
            self._dirty.discard(t)
            self._gone.add(t)
        return [
            PartialsMessage(self.source, model, [entries[t] for t in sorted(entries)])
            for model, entries in sorted(by_model.items())
        ]

    def notice(self) -> None:
        """Note the newest event time as of the references' current generation (call before
        folding with them)."""
        generation = self.refs.generation
        if generation > self.noticed_generation:
            self.noticed_generation, self.noticed = generation, self.clock.newest

    def go_quiet(self) -> list[PartialsMessage]:
        """The source has been quiet for ``idle_timeout_s`` with nothing left to read: every
        tick it holds is complete now (an event that comes later for one of them is late), so
        the windows holding its last events can close. Returns their partials."""
        if self.clock.newest > -math.inf:
            end = tick_start(self.clock.newest, self.clock.tick_s) + self.clock.tick_s
            self.clock.flushed_until = max(self.clock.flushed_until, end)
        return self.complete()

    def quiet_for(self, now_s: float, first_record_s: float) -> float:
        """How long the source has had no record by ``now_s`` (record time). A source that
        never had one is as quiet as the deployment is old: since ``first_record_s``, the
        first record any source had."""
        since = self.last_record_s if self.last_record_s > -math.inf else first_record_s
        return now_s - since

    def progress(self, idle_for_s: float | None = None) -> ProgressMessage:
        return ProgressMessage(
            self.source,
            self.clock.flushed_until,
            self.clock.newest,
            idle_for_s,
            self.noticed_generation,
            self.noticed,
        )

    # -- checkpoint ------------------------------------------------------------------------------

    def checkpoint(self) -> tuple[dict[str, bytes], list[str]]:
        """What changed since the last checkpoint: hash fields to set and to delete.

        Fields: ``"head"`` (clock and last offset) and one ``"t:<tick>"`` per open tick.
        """
        enc = msgspec.msgpack.Encoder()
        head = _HeadStored(
            self.source, self.clock.tick_s, self.clock.lateness_s, self.clock.state(),
            self.last_offset, self.last_record_s,
        )  # fmt: skip
        fields = {"head": _MAGIC + enc.encode(head)}
        for t in sorted(self._dirty):
            stored = _TickStored(
                [(m, v, k, encode_tick(p)) for (m, v, k), p in self.ticks.get(t, {}).items()],
                [
                    (m, v, k, encode_outcome(o))
                    for (m, v, k), o in self.outcome_ticks.get(t, {}).items()
                ],
            )
            fields[f"t:{t!r}"] = _MAGIC + enc.encode(stored)
        gone = [f"t:{t!r}" for t in sorted(self._gone - self._dirty)]
        self._dirty.clear()
        self._gone.clear()
        return fields, gone

    @classmethod
    def restore(
        cls,
        source: str,
        cfg: MonitoringConfig,
        refs: ReferenceLookup,
        fields: dict[str, bytes],
    ) -> tuple[SourceAggregator, str | None]:
        """An aggregator from :meth:`checkpoint` fields, and why they were discarded, if so.

        A checkpoint of another format or other tick/lateness settings is discarded (the
        source starts afresh from the committed offset): never a crash.
        """
        agg = cls(source, cfg, refs)
        head_blob = fields.get("head")
        if head_blob is None:
            return agg, None
        try:
            if head_blob[:4] != _MAGIC:
                raise StateEncodingError(f"header {head_blob[:4]!r}, expected {_MAGIC!r}")
            head = msgspec.msgpack.decode(head_blob[4:], type=_HeadStored)
            if (head.tick_s, head.lateness_s) != (cfg.tick_s, cfg.lateness_s):
                raise StateEncodingError(
                    f"written with tick_s={head.tick_s:g}, lateness_s={head.lateness_s:g}"
                )
            ticks: dict[float, dict[tuple[str, str, str], TickPartial]] = {}
            outs: dict[float, dict[tuple[str, str, str], OutcomePartial]] = {}
            for name, blob in fields.items():
                if not name.startswith("t:"):
                    continue
                if blob[:4] != _MAGIC:
                    raise StateEncodingError(f"tick {name}: header {blob[:4]!r}")
                t = float(name[2:])
                stored = msgspec.msgpack.decode(blob[4:], type=_TickStored)
                ticks[t] = {(m, v, k): decode_tick(s) for m, v, k, s in stored.predictions}
                outs[t] = {(m, v, k): decode_outcome(s) for m, v, k, s in stored.outcomes}
        except (StateEncodingError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
            return cls(source, cfg, refs), f"source {source}: checkpoint discarded ({e})"
        agg.clock = SourceClock.restore(cfg.tick_s, cfg.lateness_s, head.clock)
        agg.last_offset = head.last_offset
        agg.last_record_s = head.last_record_s
        agg.ticks = {t: c for t, c in ticks.items() if c}
        agg.outcome_ticks = {t: c for t, c in outs.items() if c}
        return agg, None
