"""A model judge's state as versioned bytes: ``b"SPM4"`` + msgpack, never pickle.

What is stored: the reference timeline (fingerprints only: references themselves live in Redis
by fingerprint), the tick summaries and window partials not closed yet, detectors, warm-up
samples, which segment values have monitors, the alert tracker and the open incidents (an
older checkpoint without them restores with none open). Settings that shape the state (window,
tick, lateness) are stored with it.

:func:`restore` never raises on a checkpoint it cannot use: one of another format (``SPM1`` and
``SPM2`` were the single-process engine's, ``SPM3`` held tick partials), another code version,
or other window settings is
discarded and the reason returned, so the caller logs it and the model starts afresh from the
partials still to come, instead of a worker that crashes on start.

The worker stores a judge in two parts (:func:`split`): the blob without the pending cells,
rewritten each batch, and one hash field per pending cell (one source's part of one tick or
window), written once when it arrives and deleted when its tick or window closes. A wide model
buffers tens of MB of partials, which would otherwise be rewritten on every batch.
:func:`restore` takes the blob and those fields (a blob with its cells inline also restores).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, Final

import msgspec

from streamproc.aggregate.partials import OutcomeState, PartialState, SummaryState
from streamproc.baseline.reference import ReferenceCache
from streamproc.config import MonitoringConfig
from streamproc.errors import StateEncodingError
from streamproc.judge.alerts import AlertTracker
from streamproc.judge.detectors import ADWINDetector, PageHinkleyDetector
from streamproc.judge.engine import (
    DetectorPair,
    ModelJudge,
    OutcomeSegment,
    PendingBaseline,
    Segment,
)
from streamproc.judge.incidents import IncidentBook
from streamproc.judge.timeline import ReferenceTimeline, TimelineState

MAGIC: Final = b"SPM4"
_NEVER = -math.inf


class _SegmentStored(msgspec.Struct, array_like=True):
    version: str
    key: str
    created_at: float
    detectors: dict[str, tuple[str, bytes, bytes]]
    detections: dict[str, dict[str, list[float]]]
    warm_windows: int
    warm_count: int
    warm_rows: list[list[Any]]
    past_counts: list[int]
    quiet_windows: int


class _OutcomeStored(msgspec.Struct, array_like=True):
    version: str
    key: str
    error_fp: str | None
    error_adwin: bytes
    error_detections: list[float]
    error_history: list[list[int]] = []


class _PendingStored(msgspec.Struct, array_like=True):
    stamp: str | None
    created_at: str | None
    refs: dict[str, str]
    dims: list[str]
    generation: int


class _Settings(msgspec.Struct, array_like=True, frozen=True):
    window_s: float
    tick_s: float
    lateness_s: float


class _JudgeStored(msgspec.Struct, array_like=True):
    model_id: str
    settings: _Settings
    timeline: TimelineState
    pending_ticks: dict[float, dict[str, list[tuple[str, str, SummaryState]]]]
    pending_outcome_ticks: dict[float, dict[str, list[tuple[str, str, list[int]]]]]
    pending_windows: dict[float, dict[str, list[tuple[str, str, PartialState]]]]
    pending_outcome_windows: dict[float, dict[str, list[tuple[str, str, OutcomeState]]]]
    closed_until: float
    outcome_closed_until: float
    window_cursor: float
    empty_run: int
    known_values: dict[str, dict[str, float]]
    segments: list[_SegmentStored]
    outcome_segments: list[_OutcomeStored]
    tracker: bytes
    late_partials: int
    duplicate_partials: int
    pending_baselines: dict[str, _PendingStored] = {}
    incidents: bytes = b""


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(_JudgeStored)


def _settings(cfg: MonitoringConfig) -> _Settings:
    return _Settings(cfg.window_s, cfg.tick_s, cfg.lateness_s)


# Pending cells by kind: the judge's attribute and the type of one cell (a source's items).
_CELLS: Final[dict[str, tuple[str, Any]]] = {
    "t": ("pending_ticks", msgspec.msgpack.Decoder(list[tuple[str, str, SummaryState]])),
    "ot": ("pending_outcome_ticks", msgspec.msgpack.Decoder(list[tuple[str, str, list[int]]])),
    "w": ("pending_windows", msgspec.msgpack.Decoder(list[tuple[str, str, PartialState]])),
    "ow": (
        "pending_outcome_windows",
        msgspec.msgpack.Decoder(list[tuple[str, str, OutcomeState]]),
    ),
}


def cell_names(j: ModelJudge) -> set[str]:
    """The field name of every pending cell of ``j``: ``<kind>|<end>|<source part>``."""
    return {
        f"{kind}|{end!r}|{who}"
        for kind, (attr, _) in _CELLS.items()
        for end, cell in getattr(j, attr).items()
        for who in cell
    }


def split(j: ModelJudge, stored: Collection[str]) -> tuple[bytes, dict[str, bytes], list[str]]:
    """``j``'s checkpoint as its blob without the pending cells, the cells whose names are not
    in ``stored`` (name -> bytes), and the names in ``stored`` that are gone (closed since).

    A cell never changes once added (a repeated one is dropped), so a stored cell is current.
    """
    names = cell_names(j)
    added = {}
    for name in sorted(names.difference(stored)):
        kind, end, who = name.split("|", 2)
        added[name] = _ENC.encode(getattr(j, _CELLS[kind][0])[float(end)][who])
    return to_bytes(j, cells=False), added, sorted(set(stored) - names)


def to_bytes(j: ModelJudge, cells: bool = True) -> bytes:
    """The checkpoint of ``j`` (without its pending cells if not ``cells``: :func:`split`)."""
    segments = [
        _SegmentStored(
            s.version,
            s.key,
            s.created_at,
            {
                f: (d.fp, d.adwin.to_bytes(), d.page_hinkley.to_bytes())
                for f, d in s.detectors.items()
            },
            s.detections,
            s.warm_windows,
            s.warm_count,
            s.warm_rows,
            s.past_counts,
            s.quiet_windows,
        )
        for s in j.segments.values()
    ]
    outcomes = [
        _OutcomeStored(
            v,
            k,
            seg.error_fp,
            seg.error_adwin.to_bytes() if seg.error_adwin is not None else b"",
            seg.error_detections,
            seg.error_history,
        )
        for (v, k), seg in j.outcome_segments.items()
    ]
    stored = _JudgeStored(
        j.model_id,
        _settings(j.cfg),
        j.timeline.state(),
        _sorted(j.pending_ticks) if cells else {},
        _sorted(j.pending_outcome_ticks) if cells else {},
        _sorted(j.pending_windows) if cells else {},
        _sorted(j.pending_outcome_windows) if cells else {},
        j.closed_until,
        j.outcome_closed_until,
        j.window_cursor,
        j.empty_run,
        j.known_values,
        segments,
        outcomes,
        j.tracker.to_bytes(),
        j.late_partials,
        j.duplicate_partials,
        {
            v: _PendingStored(p.stamp, p.created_at, p.refs, p.dims, p.generation)
            for v, p in j.pending_baselines.items()
        },
        j.incidents.to_bytes(),
    )
    return MAGIC + _ENC.encode(stored)


def restore(
    blob: bytes,
    model_id: str,
    cfg: MonitoringConfig,
    topic: str,
    refs: ReferenceCache,
    cells: Mapping[Any, bytes] | None = None,
) -> tuple[ModelJudge, str | None]:
    """The judge stored in ``blob`` and its pending ``cells`` (:func:`split`; names as str or
    bytes), or a fresh one and why the checkpoint was discarded."""
    fresh = ModelJudge(model_id, cfg, topic, refs)
    if blob[:4] != MAGIC:
        return fresh, f"model {model_id}: checkpoint of another format ({blob[:4]!r}) discarded"
    try:
        s = _DEC.decode(blob[4:])
        if s.model_id != model_id:
            raise StateEncodingError(f"it is model {s.model_id!r}'s")
        if s.settings != _settings(fresh.cfg):
            raise StateEncodingError(
                f"written with window_s={s.settings.window_s:g}, tick_s={s.settings.tick_s:g}, "
                f"lateness_s={s.settings.lateness_s:g}"
            )
        j = _restore(s, fresh)
        if cells:
            _restore_cells(j, cells)
    except (StateEncodingError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        return ModelJudge(model_id, cfg, topic, refs), (
            f"model {model_id}: checkpoint discarded ({exc})"
        )
    return j, None


def _restore_cells(j: ModelJudge, cells: Mapping[Any, bytes]) -> None:
    for raw, blob in cells.items():
        name = raw.decode() if isinstance(raw, bytes) else raw
        kind, end, who = name.split("|", 2)
        if kind not in _CELLS:
            raise StateEncodingError(f"pending cell {name!r} of no known kind")
        attr, decoder = _CELLS[kind]
        getattr(j, attr).setdefault(float(end), {})[who] = list(decoder.decode(blob))
    for attr, _ in _CELLS.values():
        setattr(j, attr, _sorted(getattr(j, attr)))


def _sorted(pending: dict[float, dict[str, Any]]) -> dict[float, dict[str, Any]]:
    """``pending`` by end, then source part: one byte form whatever the arrival order."""
    return {e: dict(sorted(pending[e].items())) for e in sorted(pending)}


def _pending(stored: dict[float, dict[str, list[Any]]]) -> dict[float, dict[str, list[Any]]]:
    return {end: {src: list(items) for src, items in c.items()} for end, c in stored.items()}


def _restore(s: _JudgeStored, j: ModelJudge) -> ModelJudge:
    j.timeline = ReferenceTimeline.restore(s.timeline)
    j.pending_ticks = _pending(s.pending_ticks)
    j.pending_outcome_ticks = _pending(s.pending_outcome_ticks)
    j.pending_windows = _pending(s.pending_windows)
    j.pending_outcome_windows = _pending(s.pending_outcome_windows)
    j.closed_until = s.closed_until
    j.outcome_closed_until = s.outcome_closed_until
    j.window_cursor = s.window_cursor
    j.empty_run = s.empty_run
    j.known_values = {dim: dict(v) for dim, v in s.known_values.items()}
    for ss in s.segments:
        seg = Segment(ss.version, ss.key, ss.created_at)
        seg.detectors = {
            f: DetectorPair(fp, ADWINDetector.from_bytes(a), PageHinkleyDetector.from_bytes(p))
            for f, (fp, a, p) in ss.detectors.items()
        }
        seg.detections = {d: {f: list(ts) for f, ts in m.items()} for d, m in ss.detections.items()}
        seg.warm_windows, seg.warm_count = ss.warm_windows, ss.warm_count
        seg.warm_rows = [list(r) for r in ss.warm_rows]
        seg.past_counts = list(ss.past_counts)
        seg.quiet_windows = ss.quiet_windows
        j.segments[(ss.version, ss.key)] = seg
    for so in s.outcome_segments:
        oseg = OutcomeSegment(
            so.error_fp,
            ADWINDetector.from_bytes(so.error_adwin) if so.error_adwin else None,
            list(so.error_detections),
            [list(h) for h in so.error_history],
        )
        j.outcome_segments[(so.version, so.key)] = oseg
    j.tracker = AlertTracker.from_bytes(s.tracker)
    j.incidents = IncidentBook.from_bytes(j.model_id, s.incidents)
    j.late_partials, j.duplicate_partials = s.late_partials, s.duplicate_partials
    j.pending_baselines = {
        v: PendingBaseline(p.stamp, p.created_at, dict(p.refs), list(p.dims), p.generation)
        for v, p in s.pending_baselines.items()
    }
    return j
