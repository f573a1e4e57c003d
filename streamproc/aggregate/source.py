"""One source partition's aggregation: open partials, their completion, their checkpoint.

A :class:`SourceAggregator` is the whole monitor state a partition-parallel agent keeps for one
source partition: its :class:`~streamproc.aggregate.clock.SourceClock` and the partials of the
windows that are still open, each with the summaries of its ticks not sent yet. Each consumed
batch is folded in (:meth:`SourceAggregator.fold`); ticks and windows that the source's
watermark has passed are complete and leave in :class:`~streamproc.aggregate.wire.PartialsMessage`
s per model (:meth:`~SourceAggregator.complete`).

Nothing here does I/O. The caller persists :meth:`~SourceAggregator.checkpoint` (only the
windows that changed since the last one) before it lets the batch's offsets be committed, and
restores it when the partition is assigned again: a re-read message whose offset the checkpoint
covers is skipped (``last_offset``), so every event is folded exactly once.

Raw segment keys
    Partials keep each segment value as it came (``"country=DE"``); which values get a monitor
    of their own is the judge's decision. Per window, model and dimension at most
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
    PartialState,
    TickSummary,
    WindowPartial,
    decode_outcome,
    decode_partial,
    encode_outcome,
    encode_partial,
    encode_summary,
)
from streamproc.aggregate.wire import (
    PartialsMessage,
    ProgressMessage,
    TickEntry,
    WindowEntry,
    pack,
)
from streamproc.baseline.profile import confidence_of
from streamproc.baseline.reference import Reference
from streamproc.config import MonitoringConfig
from streamproc.contracts import Prediction
from streamproc.errors import StateEncodingError
from streamproc.ingest.join import Joined
from streamproc.sketch import OTHER

ALL: Final = "all"
RAW_VALUES_CAP: Final = 100
_MAGIC: Final = b"SPA3"


class ReferenceLookup(Protocol):
    """Which reference bins a raw segment's events in a tick (``None``: sample them)."""

    generation: int  # the baseline store's change count these references reflect

    def lookup(
        self, model_id: str, version: str, raw_key: str, tick: float
    ) -> Reference | None: ...


class Accepted(Protocol):
    """An accepted prediction at its position in the source: what the ingest hands over
    (:class:`~streamproc.ingest.ingestor.Observed`), taken as it is."""

    @property
    def event(self) -> Prediction: ...
    @property
    def event_time(self) -> float: ...
    @property
    def offset(self) -> int: ...
    @property
    def index(self) -> int: ...  # position in a batch message; -1 for a single-event message


@dataclass(slots=True)  # one per event: frozen costs 2.4x to build
class Completed:
    """A join completed by a message of this source (label-side or prediction-side)."""

    joined: Joined
    offset: int
    index: int = -1


_SLOTS = 1 << 24  # elements per message a position can tell apart


def _positions(at: Sequence[tuple[int, int]]) -> np.ndarray:
    """Offset-order positions of (offset, index in the message) pairs, as sortable integers
    (index -1, a single-event message, sorts first).

    >>> _positions([(3, -1), (3, 0), (3, 499), (4, 0)]).tolist() == sorted(
    ...     _positions([(3, -1), (3, 0), (3, 499), (4, 0)]).tolist())
    True
    """
    if not at:
        return np.zeros(0, np.int64)
    pairs = np.array(at, dtype=np.int64)
    return pairs[:, 0] * _SLOTS + np.minimum(pairs[:, 1] + 1, _SLOTS - 1)


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


class _WindowStored(msgspec.Struct, array_like=True):
    predictions: list[tuple[str, str, PartialState]] = []  # version, raw key, state
    outcomes: list[tuple[str, str, OutcomeState]] = []


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
        # (model, version, raw segment key, window start, reference fp or "") -> open partial:
        # a window binned with a reference, then sampled while a change is pending, has two
        self.windows: dict[tuple[str, str, str, float, str], WindowPartial] = {}
        self.outcome_windows: dict[tuple[str, str, str, float], OutcomePartial] = {}
        self._dirty: set[tuple[str, float]] = set()  # (model, window start) to checkpoint
        self._gone: set[tuple[str, float]] = set()
        self._model_cfg: dict[str, MonitoringConfig] = {}
        self.late: Counter[str] = Counter()  # events too late to fold, per model (for metrics)
        # The clock as it was before admit_labels moved it, until the batch is folded: what the
        # source shows (progress, checkpoint) meanwhile. Its labels are joined in between, and
        # a progress sent then would let the judge close outcome ticks before their partials.
        self._before_admit: ClockState | None = None

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
        if not p_ok.all():
            self.late.update(
                a.event.model_id for a, ok in zip(preds, p_ok.tolist(), strict=True) if not ok
            )
        if not o_ok.all():
            self.late.update(
                c.joined.prediction.model_id
                for c, ok in zip(outs, o_ok.tolist(), strict=True)
                if not ok
            )
        self._before_admit = None
        return folded

    def admit_labels(self, offsets: Sequence[int], times: Sequence[float]) -> list[bool]:
        """Judge this labels partition's accepted labels (offset order) against its clock, as
        they are read and before they are joined: whether each may count, wherever its join
        completes (here, or later on a predictions partition: a pending label carries the
        verdict, :attr:`LabelRecord.late`). The clock follows every label read, joined or
        not, so a verdict depends on the partition's content alone, never on which side of
        a join came first. A label at or below ``last_offset`` (a re-read of what the
        checkpoint holds) moves nothing."""
        ok = [True] * len(offsets)
        fresh = [i for i, offset in enumerate(offsets) if offset > self.last_offset]
        if fresh:
            if self._before_admit is None:
                self._before_admit = self.clock.state()
            verdicts = self.clock.admit(np.array([times[i] for i in fresh], dtype=np.float64))
            for i, verdict in zip(fresh, verdicts.tolist(), strict=True):
                ok[i] = verdict
        return ok

    def _counts_anywhere(self, outs: Sequence[Completed]) -> np.ndarray:
        """Whether each outcome may count wherever its join completes: its label was not late
        on its own partition (:meth:`admit_labels`), nor stamped so long before its prediction
        (clocks apart) that a predictions partition's clock would have passed it."""
        if not outs:
            return np.zeros(0, bool)
        tick_s, lateness = self.clock.tick_s, self.clock.lateness_s
        label_t = np.array([c.joined.label.event_time for c in outs], dtype=np.float64)
        pred_t = np.array([c.joined.prediction.event_time for c in outs], dtype=np.float64)
        ends = np.floor(label_t / tick_s) * tick_s + tick_s
        with np.errstate(invalid="ignore"):
            behind = ends <= np.floor((pred_t - lateness) / tick_s) * tick_s
        return ~behind & np.array([not c.joined.label.late for c in outs], dtype=bool)

    def _admit_outcomes(self, outs: Sequence[Completed]) -> np.ndarray:
        if self.source[0] == "l":
            ok = self._counts_anywhere(outs)
            self._count_refused(outs, ok)
            return ok
        # A prediction partition's clock follows its predictions only; an outcome completed
        # there is judged against the clock as of its own message.
        times = np.array([c.joined.label.event_time for c in outs], dtype=np.float64)
        return self._outcomes_at(outs, times, self.clock.newest, _positions([]), np.zeros(0))

    def _outcomes_at(
        self,
        outs: Sequence[Completed],
        times: np.ndarray,
        newest: float,
        pred_positions: np.ndarray,
        pred_times: np.ndarray,
    ) -> np.ndarray:
        if not outs:
            return np.zeros(0, bool)
        tick_s, lateness = self.clock.tick_s, self.clock.lateness_s
        runmax = np.maximum.accumulate(np.concatenate(([newest], pred_times)))
        # Each outcome sees the clock as of the prediction element that completed it, not as of
        # the end of its message: a 500-event message spans minutes of event time.
        at = np.searchsorted(
            pred_positions, _positions([(c.offset, c.index) for c in outs]), side="right"
        )
        newest_then = runmax[at]
        with np.errstate(invalid="ignore"):
            bound = np.floor((newest_then - lateness) / tick_s) * tick_s
        bound = np.nan_to_num(bound, nan=-math.inf, neginf=-math.inf)
        bound = np.maximum(bound, self._flushed_before)
        ends = np.floor(times / tick_s) * tick_s + tick_s
        ok = (ends > bound) & self._counts_anywhere(outs)
        self._count_refused(outs, ok)
        return ok

    def _count_refused(self, outs: Sequence[Completed], ok: np.ndarray) -> None:
        """Count refused outcomes on the clock, but a late label once (where it was read)."""
        flagged = sum(1 for c, counts in zip(outs, ok.tolist(), strict=True)
                      if not counts and c.joined.label.late)  # fmt: skip
        self.clock.late += int(ok.size - np.count_nonzero(ok)) - flagged

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
        positions = _positions([(a.offset, a.index) for a in preds])
        return p_ok, self._outcomes_at(outs, o_times, newest, positions, times)

    _flushed_before = -math.inf

    def _window_s(self, model: str) -> float:
        return self.model_cfg(model).window_s

    def window_of(self, model: str, t: float) -> float:
        """The start of ``model``'s window holding event time ``t``."""
        window_s = self.model_cfg(model).window_s
        return float(math.floor(t / window_s) * window_s)

    def _partial(
        self, window: float, model: str, version: str, key: str, cap: Callable[[str], str]
    ) -> tuple[WindowPartial, Reference | None]:
        key = cap(key)
        ref = self.refs.lookup(model, version, key, window)
        at = (model, version, key, window, "" if ref is None else ref.fp)
        p = self.windows.get(at)
        if p is None:
            p = self.windows[at] = WindowPartial()
            prepare(p, ref)
        return p, ref

    def _capper(self, window: float, model: str) -> Callable[[str], str]:
        """Map a raw key to itself, or to ``dim=__other__`` past the per-window value cap."""
        seen: dict[str, set[str]] = {}
        for m, _, key, w, _ in self.windows:
            if m == model and w == window and key != ALL:
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
        windows: dict[tuple[str, float], float] = {}
        folded: Counter[str] = Counter()
        for i, (a, tick) in enumerate(zip(kept, ticks, strict=True)):
            ev = a.event
            ck = (ev.model_id, *ev.segments.items())
            keys = keys_cache.get(ck)
            if keys is None:
                dims = self.model_cfg(ev.model_id).segment_dims
                keys = keys_cache[ck] = raw_keys(ev.segments, dims)
            window = windows.get((ev.model_id, tick))
            if window is None:
                window = windows[(ev.model_id, tick)] = self.window_of(ev.model_id, tick)
            for key in keys:
                rows.setdefault((ev.model_id, ev.model_version, key, window), []).append(i)
            folded[ev.model_id] += 1
        by_k: dict[int, list[FoldGroup]] = {}
        cappers: dict[tuple[float, str], Callable[[str], str]] = {}
        merged: dict[int, tuple[FoldGroup, list[np.ndarray]]] = {}
        for (model, version, key, window), idx in rows.items():
            capper = cappers.get((window, model))
            if capper is None:
                capper = cappers[(window, model)] = self._capper(window, model)
            p, ref = self._partial(window, model, version, key, capper)
            have = merged.get(id(p))
            if have is None:
                g = FoldGroup(p, ref, np.asarray(idx, dtype=np.int64))
                merged[id(p)] = (g, [g.idx])
                by_k.setdefault(self.model_cfg(model).warmup_sample, []).append(g)
            else:  # several raw values pooled into one partial
                have[1].append(np.asarray(idx, dtype=np.int64))
            self._dirty.add((model, window))
        for g, parts in merged.values():
            if len(parts) > 1:
                g.idx = np.sort(np.concatenate(parts))
            row_ticks = [ticks[i] for i in g.idx.tolist()]
            starts = sorted(set(row_ticks))
            summaries = []
            for t in starts:
                x = g.partial.ticks.get(t)
                if x is None:
                    x = g.partial.ticks[t] = TickSummary(fp=g.partial.fp)
                summaries.append(x)
            g.summaries = summaries
            if len(starts) == 1:
                g.codes = np.zeros(len(row_ticks), np.int64)
            else:
                code_of = {t: c for c, t in enumerate(starts)}
                g.codes = np.array([code_of[t] for t in row_ticks], dtype=np.int64)
        cols = Columns(
            [a.event.features for a in kept],
            [a.event.prediction for a in kept],
            [confidence_of(a.event.prediction, a.event.scores, a.event.confidence) for a in kept],
            [a.event.latency_ms for a in kept],
            self.partition,
            [a.offset for a in kept],
            [a.index for a in kept],
            [a.event.scores for a in kept],
        )
        for sample_k, gs in by_k.items():
            fold_predictions(cols, gs, sample_k)
        return folded

    def _fold_outcomes(self, kept: Sequence[Completed]) -> Counter[str]:
        tick_s = self.clock.tick_s
        outcomes = []
        groups: dict[tuple[int, float], tuple[OutcomePartial, float, list[int]]] = {}
        folded: Counter[str] = Counter()
        for i, c in enumerate(kept):
            rec, label = c.joined.prediction, c.joined.label
            model = rec.model_id
            tick = tick_start(label.event_time, tick_s)
            window = self.window_of(model, label.event_time)
            confidence = confidence_of(rec.prediction, rec.scores, rec.confidence)
            outcomes.append((rec.prediction, label.label, confidence, rec.scores))
            dims = self.model_cfg(model).segment_dims
            for key in raw_keys(rec.segments, dims):
                at = (model, rec.model_version, key, window)
                p = self.outcome_windows.get(at)
                if p is None:
                    p = self.outcome_windows[at] = OutcomePartial()
                g = groups.get((id(p), tick))
                if g is None:
                    g = groups[(id(p), tick)] = (p, tick, [])
                g[2].append(i)
            self._dirty.add((model, window))
            folded[model] += 1
        fold_outcomes(outcomes, list(groups.values()))
        return folded

    # -- completion ------------------------------------------------------------------------------

    def complete(self) -> list[PartialsMessage]:
        """Take the ticks and windows the watermark has passed: per model, messages of the
        ticks' summaries, then one message per window partial (a window's last tick completes
        with it)."""
        until = self.clock.flushed_until
        tick_s = self.clock.tick_s
        ticks: dict[str, dict[float, tuple[list[Any], list[Any]]]] = {}
        windows: dict[str, dict[float, tuple[list[Any], list[Any]]]] = {}
        for (model, version, key, w, _), p in sorted(self.windows.items()):
            for t in sorted(t for t in p.ticks if t + tick_s <= until):
                cell = ticks.setdefault(model, {}).setdefault(t, ([], []))
                cell[0].append((version, key, encode_summary(p.ticks.pop(t))))
                self._dirty.add((model, w))
        for (model, version, key, w), o in sorted(self.outcome_windows.items()):
            for t in sorted(t for t in o.ticks if t + tick_s <= until):
                cell = ticks.setdefault(model, {}).setdefault(t, ([], []))
                cell[1].append((version, key, o.ticks.pop(t)))
                self._dirty.add((model, w))
        for done, kind in ((self.windows, 0), (self.outcome_windows, 1)):
            due = sorted(k for k in done if k[3] + self._window_s(k[0]) <= until)
            for at in due:
                model, version, key, w = at[:4]
                part = done.pop(at)  # type: ignore[call-overload]
                state = encode_partial(part) if kind == 0 else encode_outcome(part)  # type: ignore[arg-type]
                cell = windows.setdefault(model, {}).setdefault(w, ([], []))
                cell[kind].append((version, key, state))
                self._gone.add((model, w))
        out = []
        for model in sorted(set(ticks) | set(windows)):
            entries = [TickEntry(t, *ticks[model][t]) for t in sorted(ticks.get(model, {}))]
            parts = [WindowEntry(w, *windows[model][w]) for w in sorted(windows.get(model, {}))]
            out += pack(self.source, model, entries, parts)
        return out

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
        ends = [w + self.model_cfg(m).window_s for m, _, _, w, _ in self.windows]
        ends += [w + self.model_cfg(m).window_s for m, _, _, w in self.outcome_windows]
        if self.clock.newest > -math.inf:
            ends.append(tick_start(self.clock.newest, self.clock.tick_s) + self.clock.tick_s)
        if ends:
            self.clock.flushed_until = max(self.clock.flushed_until, *ends)
        return self.complete()

    def quiet_for(self, now_s: float, first_record_s: float) -> float:
        """How long the source has had no record by ``now_s`` (record time). A source that
        never had one is as quiet as the deployment is old: since ``first_record_s``, the
        first record any source had."""
        since = self.last_record_s if self.last_record_s > -math.inf else first_record_s
        return now_s - since

    def shown_clock(self) -> ClockState:
        """The clock as far as what was folded: before the labels admitted and not yet folded
        (:meth:`admit_labels`, then :meth:`fold`)."""
        return self._before_admit or self.clock.state()

    def progress(
        self, idle_for_s: float | None = None, now_s: float | None = None
    ) -> ProgressMessage:
        """The source's progress: active, or (``idle_for_s``) quiet for that long by ``now_s``
        (record time), which the report then speaks for."""
        shown = self.shown_clock()
        if idle_for_s is not None and now_s is None:
            raise ValueError("an idle report needs the time it speaks for (now_s)")
        return ProgressMessage(
            self.source,
            shown.flushed_until,
            shown.newest,
            idle_for_s,
            self.noticed_generation,
            self.noticed,
            self.last_record_s if idle_for_s is None else now_s,  # type: ignore[arg-type]
        )

    # -- checkpoint ------------------------------------------------------------------------------

    def checkpoint(self) -> tuple[dict[str, bytes], list[str]]:
        """What changed since the last checkpoint: hash fields to set and to delete.

        Fields: ``"head"`` (clock and last offsets) and one ``"w:<window start>:<model>"`` per
        model's open window (its partials and the summaries of its ticks not sent yet).
        """
        enc = msgspec.msgpack.Encoder()
        head = _HeadStored(
            self.source, self.clock.tick_s, self.clock.lateness_s, self.shown_clock(),
            self.last_offset, self.last_record_s,
        )  # fmt: skip
        fields = {"head": _MAGIC + enc.encode(head)}
        for model, w in sorted(self._dirty):
            preds = [
                (v, k, encode_partial(p))
                for (m, v, k, ws, _), p in self.windows.items()
                if m == model and ws == w
            ]
            outs = [
                (v, k, encode_outcome(o))
                for (m, v, k, ws), o in self.outcome_windows.items()
                if m == model and ws == w
            ]
            if preds or outs:
                fields[f"w:{w!r}:{model}"] = _MAGIC + enc.encode(_WindowStored(preds, outs))
            else:
                self._gone.add((model, w))
        gone = [f"w:{w!r}:{m}" for m, w in sorted(self._gone) if f"w:{w!r}:{m}" not in fields]
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
            windows: dict[tuple[str, str, str, float, str], WindowPartial] = {}
            outs: dict[tuple[str, str, str, float], OutcomePartial] = {}
            for name, blob in fields.items():
                if not name.startswith("w:"):
                    continue
                if blob[:4] != _MAGIC:
                    raise StateEncodingError(f"window {name}: header {blob[:4]!r}")
                start, _, model = name[2:].partition(":")
                w = float(start)
                stored = msgspec.msgpack.decode(blob[4:], type=_WindowStored)
                for v, k, st in stored.predictions:
                    windows[(model, v, k, w, st.fp or "")] = decode_partial(st)
                for v, k, ost in stored.outcomes:
                    outs[(model, v, k, w)] = decode_outcome(ost)
        except (StateEncodingError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
            return cls(source, cfg, refs), f"source {source}: checkpoint discarded ({e})"
        agg.clock = SourceClock.restore(cfg.tick_s, cfg.lateness_s, head.clock)
        agg.last_offset = head.last_offset
        agg.last_record_s = head.last_record_s
        agg.windows, agg.outcome_windows = windows, outs
        return agg, None
