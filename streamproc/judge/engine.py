"""The judge of one model: merge partials into windows, compare, detect, alert.

A :class:`ModelJudge` receives what every source completed
(:class:`~streamproc.aggregate.wire.PartialsMessage`: tick summaries and window partials) and,
when the sources' progress allows (:class:`~streamproc.judge.progress.Bounds`), closes ticks and
windows in event-time order:

- a **tick** closes once every source has passed it: its summaries are merged (sources in a
  fixed order), raw segment values are mapped to monitors, and every numeric feature's
  standardised tick mean feeds that monitor's ADWIN and Page-Hinkley detectors;
- a **window** closes once its last tick has: the sources' window partials are merged, judged
  against the window's reference (see :mod:`streamproc.judge.timeline`) by
  :mod:`streamproc.judge.checks`, verdicts go through the
  :class:`~streamproc.judge.alerts.AlertTracker`, and one ``metrics.v1`` record per monitor
  is emitted. A monitor without a reference yet warms up on its first windows' samples.

Outcomes (joined labels, by label time) close the same way on their own boundary, never past
the predictions': accuracy, calibration and label drift per window, ADWIN on the error stream
per tick.

Everything a closing reads is either the partials, merged in a fixed order, or state indexed by
event time (the reference timeline, when each segment value got its monitor), so the output is
the same however the sources' messages interleaved, however far each call could close, on one
worker, two, or a replay.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from streamproc.aggregate.fold import fold_rows, prepare, tick_zsums
from streamproc.aggregate.partials import (
    Z_SCALE,
    OutcomePartial,
    OutcomeState,
    PartialState,
    SummaryState,
    TickSummary,
    WindowPartial,
    add_sums,
    decode_outcome,
    decode_partial,
    decode_summary,
    merge_spans,
)
from streamproc.aggregate.wire import PartialsMessage
from streamproc.baseline.reference import Reference, ReferenceCache
from streamproc.config import MonitoringConfig
from streamproc.contracts import Alert, Incident, MetricsRecord, Window
from streamproc.judge import checks
from streamproc.judge.alerts import AlertKey, AlertTracker, Kind, Severity, Verdict, iso
from streamproc.judge.detectors import ADWINDetector, PageHinkleyDetector
from streamproc.judge.incidents import IncidentBook
from streamproc.judge.progress import Bounds
from streamproc.judge.timeline import ReferenceTimeline
from streamproc.sketch import OTHER

log = logging.getLogger(__name__)

ALL: Final = "all"
EMPTY_WINDOWS_CAP: Final = 12
ERROR_HISTORY: Final = 256
"""Ticks of an outcome monitor's error stream kept to describe an error-stream detection."""
"""Empty windows judged in a row for a model that went silent; after that the judge skips
ahead to its next data (volume alerts keep firing, nothing else could change)."""


def _part_of(source: str, part: int) -> str:
    """Who sent an item: its source, and the part of the tick or window it came in."""
    return source if part == 0 else f"{source}#{part}"


def segment_of(key: str) -> dict[str, str]:
    """The ``segment`` of a ``metrics.v1`` record or alert for a monitor key.

    >>> segment_of("all"), segment_of("country=DE")
    ({}, {'country': 'DE'})
    """
    if key == ALL:
        return {}
    dim, _, value = key.partition("=")
    return {dim: value}


@dataclass
class Output:
    """What one :meth:`ModelJudge.advance` emitted."""

    alerts: list[Alert] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    metrics: list[MetricsRecord] = field(default_factory=list)
    detections: list[tuple[str, str, str]] = field(default_factory=list)  # detector, seg, feat
    references: list[tuple[str, str, Reference]] = field(default_factory=list)  # warm-ups
    windows_closed: int = 0

    def extend(self, other: Output) -> None:
        self.alerts += other.alerts
        self.incidents += other.incidents
        self.metrics += other.metrics
        self.detections += other.detections
        self.references += other.references
        self.windows_closed += other.windows_closed


@dataclass
class WindowState:
    """A monitor's closing window: its sources' partials merged, per reference they used."""

    common: WindowPartial = field(default_factory=WindowPartial)  # every event: counts, offsets
    by_fp: dict[str | None, WindowPartial] = field(default_factory=dict)  # None: samples

    def add(self, p: WindowPartial, k: int) -> None:
        self.common.merge_common(p)
        have = self.by_fp.get(p.fp)
        if have is None:
            self.by_fp[p.fp] = p
        else:
            have.absorb(p, k)


@dataclass
class DetectorPair:
    """ADWIN and Page-Hinkley on one feature's standardised tick means, for one reference."""

    fp: str
    adwin: ADWINDetector
    page_hinkley: PageHinkleyDetector


@dataclass
class Segment:
    """One prediction monitor: (model version, segment key)."""

    version: str
    key: str
    created_at: float
    detectors: dict[str, DetectorPair] = field(default_factory=dict)
    detections: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # det -> f -> t
    warm_windows: int = 0
    warm_count: int = 0
    warm_rows: list[list[Any]] = field(default_factory=list)
    past_counts: list[int] = field(default_factory=list)
    quiet_windows: int = 0  # consecutive windows without an event while another version had


@dataclass
class PendingBaseline:
    """A baseline change noticed but not decided yet (see :meth:`ModelJudge.decide`)."""

    stamp: str | None
    created_at: str | None
    refs: dict[str, str]
    dims: list[str]
    generation: int


@dataclass
class OutcomeSegment:
    """One outcome monitor: its error-stream detector."""

    error_fp: str | None = None
    error_adwin: ADWINDetector | None = None
    error_detections: list[float] = field(default_factory=list)
    # the last ERROR_HISTORY ticks fed: [labelled events, errors (classification) or absolute
    # error in millionths (regression)], to say what the detector saw when it fires
    error_history: list[list[int]] = field(default_factory=list)


Hook = Callable[[str, str, float, Reference, WindowPartial], None]


class ModelJudge:
    """Every monitor of one model; see the module docstring.

    Parameters
    ----------
    model_id
        The model judged.
    cfg
        The ``monitoring`` settings; ``monitoring.models[model_id]`` is applied here.
    topic
        The predictions topic, named in alerts' ``source`` so they can be replayed.
    refs
        References by fingerprint; the caller loads every one :meth:`needed_fps` names before
        :meth:`advance` (warm-up references built here are put in it).
    """

    def __init__(
        self, model_id: str, cfg: MonitoringConfig, topic: str, refs: ReferenceCache
    ) -> None:
        cfg = cfg.for_model(model_id)
        if abs(cfg.window_s / cfg.tick_s - round(cfg.window_s / cfg.tick_s)) > 1e-9:
            raise ValueError("monitoring.window_s must be a multiple of monitoring.tick_s")
        self.model_id = model_id
        self.cfg = cfg
        self.topic = topic
        self.refs = refs
        self.timeline = ReferenceTimeline()
        self.pending_baselines: dict[str, PendingBaseline] = {}
        self.hold = math.inf  # no prediction window from here closes: a change is pending
        # end -> source -> [(version, raw segment key, state)], until the tick/window closes
        self.pending_ticks: dict[float, dict[str, list[tuple[str, str, SummaryState]]]] = {}
        self.pending_outcome_ticks: dict[float, dict[str, list[tuple[str, str, list[int]]]]] = {}
        self.pending_windows: dict[float, dict[str, list[tuple[str, str, PartialState]]]] = {}
        self.pending_outcome_windows: dict[
            float, dict[str, list[tuple[str, str, OutcomeState]]]
        ] = {}
        self.closed_until = -math.inf
        self.outcome_closed_until = -math.inf
        self.window_cursor = -math.inf  # start of the next prediction window to close
        self.segments: dict[tuple[str, str], Segment] = {}
        self.outcome_segments: dict[tuple[str, str], OutcomeSegment] = {}
        self.known_values: dict[str, dict[str, float]] = {}  # dim -> value -> admitted at
        self.tracker = AlertTracker(cfg.clear_windows)
        self.incidents = IncidentBook(model_id)
        self.late_partials = 0
        self.duplicate_partials = 0
        self.empty_run = 0
        self.on_window: Hook | None = None

    # -- intake ----------------------------------------------------------------------------------

    def add(self, msg: PartialsMessage) -> None:
        """Take one source's complete ticks and windows; late or repeated ones are counted and
        dropped.

        A source sends a tick or a window once, complete, in one or more numbered parts (twice
        only after a crash, and then the same). Only the first copy of a part counts.
        """
        tick_s, window_s = self.cfg.tick_s, self.cfg.window_s
        entries: list[tuple[str, Any, float, dict[Any, Any], float]] = []
        for tick in msg.ticks:
            end, who = tick.start + tick_s, _part_of(msg.source, tick.part)
            entries.append((who, tick.predictions, end, self.pending_ticks, self.closed_until))
            entries.append(
                (who, tick.outcomes, end, self.pending_outcome_ticks, self.outcome_closed_until)
            )
        for win in msg.windows:
            end, who = win.start + window_s, _part_of(msg.source, win.part)
            entries.append((who, win.predictions, end, self.pending_windows, self.window_cursor))
            entries.append(
                (who, win.outcomes, end, self.pending_outcome_windows, self.outcome_closed_until)
            )
        for who, items, end, pending, closed in entries:
            if not items:
                continue
            if end <= closed:
                self.late_partials += 1
                continue
            cell = pending.setdefault(end, {})
            if who in cell:
                self.duplicate_partials += 1
                continue
            cell[who] = list(items)

    def needed_fps(self) -> set[str]:
        """Every reference fingerprint the next :meth:`advance` may need."""
        fps = self.timeline.fps()
        for pending in (self.pending_ticks, self.pending_windows):
            for cell in pending.values():
                for items in cell.values():
                    fps.update(st.fp for _, _, st in items if st.fp is not None)
        for seg in self.segments.values():
            fps.update(d.fp for d in seg.detectors.values())
        fps.update(o.error_fp for o in self.outcome_segments.values() if o.error_fp)
        for p in self.pending_baselines.values():
            fps.update(p.refs.values())
        return fps

    # -- references ------------------------------------------------------------------------------

    def offer_baseline(
        self,
        version: str,
        stamp: str | None,
        created_at: str | None,
        refs: dict[str, Reference],
        dims: list[str],
        generation: int,
    ) -> bool:
        """Note a new, replaced or deleted (``stamp=None``) baseline of ``version``, seen in the
        store at change count ``generation``; :meth:`decide` applies it. ``refs`` must be
        narrowed to ``monitoring.features``. ``False`` when it is the one applied already."""
        if stamp == self.timeline.stamp(version) and version not in self.pending_baselines:
            return False
        have = self.pending_baselines.get(version)
        if have is not None and have.stamp == stamp:
            return False
        for ref in refs.values():
            self.refs.put(ref)
        self.pending_baselines[version] = PendingBaseline(
            stamp, created_at, {k: r.fp for k, r in refs.items()}, list(dims), generation
        )
        return True

    def decide(
        self, acknowledged: Callable[[int], bool], binned_until: Callable[[int], float]
    ) -> list[str]:
        """Apply the pending baselines every source has acknowledged; return what was decided.

        A version never given a reference before takes its baseline from the first window not
        closed yet (the sources sampled it). Otherwise the baseline starts at the first window
        after every event a source may have binned with the previous reference
        (``binned_until(generation)``: the sources sample a model once they notice its change,
        see :meth:`~streamproc.judge.progress.SourceProgress.binned_until`), and never before
        the first window not closed yet. Until then no window from where it may start closes
        (:attr:`hold`), so none is judged against the reference the change replaces.
        """
        done = []
        self.hold = math.inf
        for version in sorted(self.pending_baselines):
            p = self.pending_baselines[version]
            start = self.window_cursor
            if self.timeline.decided(version):
                bound = self._window_start(binned_until(p.generation)) + self.cfg.window_s
                start = max(start, bound)
                if not acknowledged(p.generation):
                    self.hold = min(self.hold, start)
                    continue
            del self.pending_baselines[version]
            if self.timeline.set_baseline(version, start, p.stamp, p.created_at, p.refs, p.dims):
                since = iso(start) if start > -math.inf else "its first window"
                what = (
                    "deleted" if p.stamp is None else f"of {p.created_at}, {len(p.refs)} segments"
                )
                done.append(f"version {version}: baseline {what}; judges windows from {since}")
        return done

    def set_baseline(
        self,
        version: str,
        created_at: str | None,
        refs: dict[str, Reference],
        dims: list[str],
        stamp: str | None = None,
    ) -> bool:
        """Offer a baseline and decide it at once: for a single process whose sources see it
        at the same moment (replays and tests)."""
        stamp = stamp if stamp is not None else (None if created_at is None else created_at)
        self.offer_baseline(version, stamp, created_at, refs, dims, 0)
        return bool(self.decide(lambda _g: True, lambda _g: -math.inf))

    def _ref(self, fp: str | None) -> Reference | None:
        ref = self.refs.get(fp)
        if ref is None and fp is not None:
            log.warning(
                "model %s: reference %s is not known; judging without it", self.model_id, fp
            )
        return ref

    # -- segments --------------------------------------------------------------------------------

    def _monitored(self, version: str, raw: str, t: float, admit: bool) -> str:
        """The monitor key of a raw segment key at event time ``t``.

        Dimensions the baseline is segmented by keep the baseline's values (others are
        ``__other__``); other dimensions get a monitor for each of the first
        ``max_segment_values`` values seen, in closing order. ``admit=False`` (outcomes) only
        reads what predictions admitted by ``t``.
        """
        if raw == ALL:
            return raw
        dim, _, value = raw.partition("=")
        fixed = self.timeline.fixed_values(version, t)
        if dim in fixed:
            return raw if value in fixed[dim] else f"{dim}={OTHER}"
        if value == OTHER:
            return raw
        known = self.known_values.setdefault(dim, {})
        at = known.get(value)
        cap = self.cfg.max_segment_values
        if admit:
            if at is not None:
                return raw
            if len(known) >= cap:
                return f"{dim}={OTHER}"
            known[value] = t
            return raw
        if at is not None and at <= t:
            return raw
        if sum(1 for a in known.values() if a <= t) >= cap:
            return f"{dim}={OTHER}"
        return raw

    def _segment(self, version: str, key: str, t: float) -> Segment:
        seg = self.segments.get((version, key))
        if seg is None:
            seg = self.segments[(version, key)] = Segment(version, key, t)
        return seg

    def _n_segments(self, version: str, t: float | None = None) -> int:
        """Monitors of a model version (the Bonferroni split): the baseline's segments, or
        those seen so far (by ``t``, when given)."""
        entry = (
            self.timeline.latest(version) if t is None else self.timeline.baseline_at(version, t)
        )
        in_baseline = len(entry.refs) if entry is not None else 0
        seen = sum(
            1
            for (v, _), s in self.segments.items()
            if v == version and (t is None or s.created_at <= t)
        )
        return max(in_baseline, seen, 1)

    # -- closing ---------------------------------------------------------------------------------

    def advance(self, bounds: Bounds, emitted_at: str, final: bool = False) -> Output:
        """Close every tick and window ``bounds`` allow (``final``: everything with data)."""
        cfg = self.cfg
        out = Output()
        b_p, complete_p = self._bound(bounds.predictions, bounds.silent_predictions, final)
        if not final:
            b_p = min(b_p, self.hold)
        b_o, _ = self._bound(bounds.outcomes, bounds.silent_outcomes, final)
        b_o = min(b_o, b_p)
        tick_s, window_s = cfg.tick_s, cfg.window_s
        items: list[tuple[float, int, float]] = []
        items += [(end, 0, end - tick_s) for end in self.pending_ticks if end <= b_p]
        items += [(end, 2, end - tick_s) for end in self.pending_outcome_ticks if end <= b_o]
        for w in self._windows_to_close(items, b_p, final):
            items.append((w + window_s, 1, w))
        items += [(end, 3, end - window_s) for end in self.pending_outcome_windows if end <= b_o]
        for end, kind, start in sorted(items):
            first = len(out.alerts)
            if kind == 0:
                self._close_tick(start, emitted_at, out)
            elif kind == 1:
                self._close_window(start, emitted_at, out, end <= complete_p)
                out.windows_closed += 1
            elif kind == 2:
                self._close_outcome_tick(start, emitted_at, out)
            else:
                self._close_outcome_window(start, emitted_at, out)
            out.incidents += self.incidents.step(out.alerts[first:], end, emitted_at)
        if b_p > self.closed_until and b_p < math.inf:
            self.closed_until = b_p
        if b_o > self.outcome_closed_until and b_o < math.inf:
            self.outcome_closed_until = b_o
        if final:
            ends = [end for end, kind, _ in items if kind in (0, 1)]
            self.closed_until = max([self.closed_until, *ends])
            o_ends = [end for end, kind, _ in items if kind in (2, 3)]
            self.outcome_closed_until = max([self.outcome_closed_until, *o_ends])
        return out

    def _window_start(self, t: float) -> float:
        return float(math.floor(t / self.cfg.window_s) * self.cfg.window_s)

    def _bound(
        self, bound: float, silent: tuple[float, float] | None, final: bool
    ) -> tuple[float, float]:
        """The boundary to close to, and up to where closed windows are complete (their
        volume means something: not cut short by the end of a replay)."""
        if final:
            return math.inf, bound
        if silent is None:
            return bound, bound
        newest, quiet = silent
        # Silent for idle_timeout_s: close the window holding the last events, then one more
        # window for every window_s of silence.
        window_s, tick_s = self.cfg.window_s, self.cfg.tick_s
        held = self._window_start(newest) + window_s
        grown = math.floor((newest + quiet - self.cfg.idle_timeout_s) / tick_s) * tick_s
        b = max(bound, held, grown)
        return b, b

    def _windows_to_close(
        self, items: list[tuple[float, int, float]], b_p: float, final: bool
    ) -> list[float]:
        window_s = self.cfg.window_s
        with_data = {end - window_s for end in self.pending_windows}
        with_data |= {self._window_start(t) for _, kind, t in items if kind == 0}
        if not with_data and (self.window_cursor == -math.inf or not self.segments):
            return []
        start = (
            min([self.window_cursor, *with_data])
            if self.window_cursor > -math.inf
            else (min(with_data))
        )
        limit = max(with_data, default=-math.inf) + window_s if final else b_p
        out: list[float] = []
        w = start
        run = self.empty_run
        while w + window_s <= limit:
            if w in with_data:
                run = 0
                out.append(w)
            elif run < EMPTY_WINDOWS_CAP:
                run += 1
                out.append(w)
            else:  # long silence: skip to the next window with data, or to the boundary
                ahead = [x for x in with_data if x > w]
                if not ahead:
                    break
                w = min(ahead)
                continue
            w += window_s
        return out

    def _close_tick(self, t: float, emitted_at: str, out: Output) -> None:
        """Merge the tick's summaries per monitor and reference; feed the detectors."""
        cfg = self.cfg
        cell = self.pending_ticks.pop(t + cfg.tick_s)
        groups: dict[tuple[str, str], dict[str | None, TickSummary]] = {}
        for source in sorted(cell):
            for version, raw, state in cell[source]:
                key = self._monitored(version, raw, t, admit=True)
                x = decode_summary(state)
                by_fp = groups.setdefault((version, key), {})
                have = by_fp.get(x.fp)
                if have is None:
                    by_fp[x.fp] = x
                else:
                    have.absorb(x, cfg.warmup_sample)
        if self.window_cursor == -math.inf:
            self.window_cursor = self._window_start(t)
        closing = []
        for version, key in sorted(groups):
            seg = self._segment(version, key, t)
            ref = self._ref(self.timeline.select(version, key, self._window_start(t)))
            if ref is not None:
                closing.append((seg, groups[(version, key)], ref))
        # Sampled summaries (their sources had no reference yet) binned as the sources would
        # have: all of the tick's in one pass.
        sampled = [
            (by_fp[None].sample, ref)
            if None in by_fp and by_fp[None].sampled_out == 0 else ([], ref)
            for _, by_fp, ref in closing
        ]  # fmt: skip
        binned_samples = tick_zsums(sampled) if any(rows for rows, _ in sampled) else None
        for i, (seg, by_fp, ref) in enumerate(closing):
            zsum: dict[str, list[int]] = {}
            offsets: dict[str, list[int]] = {}
            for x in by_fp.values():
                merge_spans(offsets, x.offsets)
            binned = by_fp.get(ref.fp)
            if binned is not None:
                add_sums(zsum, binned.zsum)
            if binned_samples is not None:
                add_sums(zsum, binned_samples[i])
            if zsum:
                window = (t, t + cfg.tick_s)
                self._feed_detectors(seg, t, zsum, ref, offsets, window, emitted_at, out)

    def _feed_detectors(
        self,
        seg: Segment,
        t: float,
        zsum: dict[str, list[int]],
        ref: Reference,
        offsets: dict[str, list[int]],
        window: tuple[float, float],
        emitted_at: str,
        out: Output,
    ) -> None:
        """Feed each feature's standardised tick mean to its ADWIN and Page-Hinkley detectors;
        alert at the tick one fires."""
        cfg = self.cfg
        for name, (total_fixed, n, *_) in sorted(zsum.items()):
            if n <= 0 or name not in ref.numeric or ref.scales[name][1] <= 0:
                continue
            total = total_fixed / Z_SCALE
            z = total / math.sqrt(n)
            pair = seg.detectors.get(name)
            if pair is None or pair.fp != ref.fp:  # a new reference: a new standardisation
                pair = seg.detectors[name] = DetectorPair(
                    ref.fp,
                    ADWINDetector(delta=self._adwin_delta(seg, ref), clock=1),
                    PageHinkleyDetector(
                        min_instances=cfg.page_hinkley_min_instances,
                        delta=cfg.page_hinkley_delta,
                        threshold=cfg.page_hinkley_threshold,
                        alpha=cfg.page_hinkley_alpha,
                        mode="both",
                    ),
                )
            pair.adwin.update(z)
            pair.page_hinkley.update(z)
            for detector, d, extra in (
                ("adwin", pair.adwin, {"adwin_width_ticks": pair.adwin.width}),
                ("page_hinkley", pair.page_hinkley, {}),
            ):
                if not d.drift_detected:
                    continue
                seg.detections.setdefault(detector, {}).setdefault(name, []).append(t)
                out.detections.append((detector, seg.key, name))
                evidence = {
                    "summary": feature_detector_summary(
                        detector, name, int(n), total / n, t, extra
                    ),
                    "tick_events": int(n),
                    "tick_mean_in_reference_sd": round(total / n, 4),
                    **extra,
                }
                verdict = Verdict(
                    "warning", False, round(total / n, 6), 0.0, window, evidence, offsets
                )
                self._observe(
                    seg.version, seg.key, name, detector, "feature_drift", verdict, emitted_at, out
                )

    def _adwin_delta(self, seg: Segment, ref: Reference) -> float:
        """One ADWIN's share of the fleet-wide ``adwin_delta``: split evenly across every
        numeric feature of every segment of the model version (Bonferroni)."""
        numeric = max(len(ref.numeric), 1)
        return self.cfg.adwin_delta / (numeric * self._n_segments(seg.version))

    def _observe(
        self,
        version: str,
        key: str,
        feature: str | None,
        detector: str,
        kind: Kind,
        verdict: Verdict,
        emitted_at: str,
        out: Output,
    ) -> None:
        akey = AlertKey(
            self.model_id, version, tuple(sorted(segment_of(key).items())), feature, detector,
            kind,
        )  # fmt: skip
        self.incidents.verdict(akey, verdict)
        out.alerts.extend(self.tracker.observe(akey, verdict, self.topic, emitted_at))

    def _close_window(self, w: float, emitted_at: str, out: Output, complete: bool) -> None:
        cfg = self.cfg
        window = (w, w + cfg.window_s)
        self.window_cursor = max(self.window_cursor, window[1])
        last_tick = window[1] - cfg.tick_s
        closing: dict[tuple[str, str], WindowState | None] = dict.fromkeys(self.segments)
        cell = self.pending_windows.pop(window[1], {})
        for source in sorted(cell):
            for version, raw, state in cell[source]:
                key = self._monitored(version, raw, last_tick, admit=False)
                self._segment(version, key, w)
                win = closing.get((version, key))
                if win is None:
                    win = closing[(version, key)] = WindowState()
                win.add(decode_partial(state), cfg.warmup_sample)
        counts: dict[str, Counter[str]] = {}
        for (version, key), win in closing.items():
            counts.setdefault(key, Counter())[version] = win.common.count if win else 0
        self.empty_run = (
            0 if any(c for cs in counts.values() for c in cs.values()) else (self.empty_run + 1)
        )
        retired: set[str] = set()
        for version, key in sorted(closing):
            seg = self.segments[(version, key)]
            win = closing[(version, key)] or WindowState()
            others = max((n for v, n in counts[key].items() if v != version), default=0)
            # Another version carries this segment's traffic: a rollout, not an outage.
            superseded = others > win.common.count
            if superseded and win.common.count == 0:
                seg.quiet_windows += 1
                if seg.quiet_windows >= 2 * self.cfg.clear_windows + 1:
                    retired.add(version)
            else:
                seg.quiet_windows = 0
            self._judge_window(seg, win, window, emitted_at, out, complete and not superseded)
        for version in sorted(retired):
            if all(s.quiet_windows >= 2 * self.cfg.clear_windows + 1
                   for (v, _), s in self.segments.items() if v == version):  # fmt: skip
                self._retire(version, window, emitted_at, out)

    def _retire(
        self, version: str, window: tuple[float, float], emitted_at: str, out: Output
    ) -> None:
        """Drop a model version that another has replaced, resolving what still fires on it."""
        log.info(
            "model %s: version %s retired (no traffic, another version has)", self.model_id, version
        )
        for key in [k for k in self.segments if k[0] == version]:
            del self.segments[key]
        verdict = Verdict(None, True, 0.0, 0.0, window, {"reason": "model version retired"})
        out.alerts += self.tracker.resolve_where(
            lambda k: k.model_version == version, verdict, self.topic, emitted_at
        )

    def _judge_window(
        self,
        seg: Segment,
        win: WindowState,
        window: tuple[float, float],
        emitted_at: str,
        out: Output,
        complete: bool,
    ) -> None:
        cfg = self.cfg
        ref = self._ref(self.timeline.select(seg.version, seg.key, window[0]))
        if ref is None:
            sample = win.by_fp.get(None)
            if sample is not None and win.common.count:
                self._warm_up(seg, win, window, out)
            return
        part = win.by_fp.get(ref.fp)
        if part is None:
            part = WindowPartial()
            prepare(part, ref)
        sample = win.by_fp.get(None)
        if sample is not None and sample.sample:
            # Rows the sources sampled (no reference decided when they folded them): all of
            # them, or, past ``warmup_sample`` rows, a uniform sample (the smallest hashes).
            # Either way the window's features are judged on the rows there are, counted as
            # such; left out, the window would be judged on nothing and say nothing.
            binned = WindowPartial(len(sample.sample))
            fold_rows(sample.sample, binned, ref)
            part = part.merge(binned)
        offsets = win.common.offsets

        def judge(
            feature: str | None,
            detector: str,
            kind: Kind,
            severity: Severity | None,
            cleared: bool,
            value: float,
            threshold: float,
            evidence: dict[str, Any],
        ) -> None:
            v = Verdict(severity, cleared, value, threshold, window, evidence, offsets)
            self._observe(seg.version, seg.key, feature, detector, kind, v, emitted_at, out)

        n_monitors = max(len(self.segments), 1)
        mv = int(cfg.multivariate and ref.reconstruction is not None)
        n_tests = max(len(ref.numeric) + len(ref.categorical) + mv, 1) * n_monitors
        rows, agreeing = checks.features(cfg, ref, part, part.count, n_tests, judge)
        firing = [
            k.feature
            for k, _ in self.tracker.firing()
            if k.detector == "new_feature"
            and k.model_version == seg.version
            and k.segment == tuple(sorted(segment_of(seg.key).items()))
            and k.feature is not None
        ]
        checks.new_features(cfg, ref, win.common.present, win.common.count, firing, judge)
        # ADWIN and Page-Hinkley: a detection during the window is a warning (raised at its
        # tick); critical when the window's own statistics (PSI or KS) agree; none clears.
        for detector in ("adwin", "page_hinkley"):
            for name in sorted(n for n, d in seg.detectors.items() if d.fp == ref.fp):
                ticks = seg.detections.get(detector, {}).get(name, [])
                hits = [t for t in ticks if t < window[1]]
                if ticks:
                    seg.detections[detector][name] = [t for t in ticks if t >= window[1]]
                agree = agreeing.get(name, [])
                sev: Severity | None = ("critical" if agree else "warning") if hits else None
                judge(
                    name, detector, "feature_drift", sev, not hits, float(len(hits)), 1.0,
                    {"detections_in_window": len(hits), "agreeing_statistics": agree},
                )  # fmt: skip
        outputs = checks.outputs(cfg, ref, part, win.common, n_monitors, judge)
        outputs.update(checks.multivariate(cfg, ref, part, n_tests, judge))
        if complete:
            seg.past_counts = checks.volume(cfg, ref, win.common.count, seg.past_counts, judge)
        out.metrics.append(
            MetricsRecord(
                model_id=self.model_id,
                model_version=seg.version,
                segment=segment_of(seg.key),
                window=Window(iso(window[0]), iso(window[1])),
                count=win.common.count,
                reference=ref.origin,
                features=rows,
                outputs=outputs,
                performance={},
                emitted_at=emitted_at,
                class_performance=checks.estimated_performance(cfg, ref, win.common),
            )
        )
        if self.on_window is not None:
            self.on_window(seg.version, seg.key, window[0], ref, part)

    def _warm_up(
        self, seg: Segment, win: WindowState, window: tuple[float, float], out: Output
    ) -> None:
        """Collect a reference-less window's sample; once ``warmup_windows`` windows and
        ``warmup_min_rows`` rows are in, build the monitor's warm-up reference from them. It
        judges the windows from the end of this one on."""
        from streamproc.baseline import ProfileBuilder

        cfg = self.cfg
        sample = win.by_fp.get(None)
        seg.warm_windows += 1
        seg.warm_count += win.common.count
        if sample is not None:
            seg.warm_rows.extend(sample.sample)
        if seg.warm_windows < cfg.warmup_windows or len(seg.warm_rows) < min(
            cfg.warmup_min_rows, cfg.warmup_sample
        ):
            return
        builder = ProfileBuilder(self.model_id, seg.version, [])
        for _, features, prediction, confidence in sorted(seg.warm_rows, key=lambda r: r[0]):
            builder.add(features, prediction=prediction, score=confidence)
        profile = builder.build(
            f"warm-up: first {seg.warm_windows} window(s)", created_at=iso(window[1])
        )
        rate = seg.warm_count / (seg.warm_windows * cfg.window_s)
        segment = msgspec.structs.replace(profile.segments[ALL], rate_per_s=rate)
        ref = self.refs.put(Reference.of(segment, "warmup").narrowed(cfg.features))
        self.timeline.add_warmup(seg.version, seg.key, ref.fp, window[1])
        out.references.append((seg.version, seg.key, ref))
        seg.warm_rows = []

    # -- outcomes --------------------------------------------------------------------------------

    def _close_outcome_tick(self, t: float, emitted_at: str, out: Output) -> None:
        cfg = self.cfg
        cell = self.pending_outcome_ticks.pop(t + cfg.tick_s)
        # (version, key) -> [labelled, correct, abs error in millionths, numeric pairs]
        groups: dict[tuple[str, str], list[int]] = {}
        for source in sorted(cell):
            for version, raw, values in cell[source]:
                key = self._monitored(version, raw, t, admit=False)
                acc_n = groups.setdefault((version, key), [0, 0, 0, 0])
                for i, v in enumerate(values):  # ticks sent before the errors have two values
                    acc_n[i] += v
        w = self._window_start(t)
        for version, key in sorted(groups):
            n, correct, abs_micro, pairs = groups[(version, key)]
            oseg = self.outcome_segments.setdefault((version, key), OutcomeSegment())
            fp = self.timeline.select(version, key, w)
            ref = self._ref(fp)
            if ref is None:
                continue
            # Concept drift between windows: ADWIN on the error stream per tick, standardised
            # with the reference (unit variance under no change): a classifier's 0/1 error, a
            # regression model's absolute error.
            stream = _error_stream(ref, n, correct, abs_micro, pairs)
            if stream is None:
                continue
            z, events, observed, expected = stream  # observed: the tick's error sum
            if oseg.error_adwin is None or oseg.error_fp != fp:
                delta = cfg.adwin_error_delta / self._n_segments(version, t)
                oseg.error_adwin, oseg.error_fp = ADWINDetector(delta=delta, clock=1), fp
                oseg.error_detections = []
                oseg.error_history = []
            adwin = oseg.error_adwin
            before = adwin.width
            adwin.update(round(z, 6))
            oseg.error_history = [*oseg.error_history[-(ERROR_HISTORY - 1) :], [events, observed]]
            if not adwin.drift_detected:
                continue
            oseg.error_detections.append(t)
            out.detections.append(("adwin_error", key, ""))
            evidence = error_stream_evidence(
                ref.task, oseg.error_history, before + 1, adwin.width, expected, t
            )
            tick_mean = observed / (Z_SCALE if ref.task == "regression" else 1) / events
            if ref.task == "regression":  # the tick's MAE against the reference's
                value, threshold = round(tick_mean, 6), round(expected, 6)
            else:  # the tick's accuracy against the reference's
                value, threshold = round(1.0 - tick_mean, 6), 1.0 - expected
            verdict = Verdict("warning", False, value, threshold, (t, t + cfg.tick_s), evidence)
            self._observe(
                version, key, None, "adwin_error", "performance", verdict, emitted_at, out
            )

    def _close_outcome_window(self, w: float, emitted_at: str, out: Output) -> None:
        cfg = self.cfg
        window = (w, w + cfg.window_s)
        groups: dict[tuple[str, str], OutcomePartial] = {}
        cell = self.pending_outcome_windows.pop(window[1], {})
        for source in sorted(cell):
            for version, raw, state in cell[source]:
                key = self._monitored(version, raw, window[1] - cfg.tick_s, admit=False)
                o = decode_outcome(state)
                have = groups.get((version, key))
                groups[(version, key)] = o if have is None else have.absorb(o)
        for (version, key), o in sorted(groups.items()):
            oseg = self.outcome_segments.setdefault((version, key), OutcomeSegment())
            ref = self._ref(self.timeline.select(version, key, w))

            def judge(
                feature: str | None,
                detector: str,
                kind: Kind,
                severity: Severity | None,
                cleared: bool,
                value: float,
                threshold: float,
                evidence: dict[str, Any],
                version: str = version,
                key: str = key,
            ) -> None:
                v = Verdict(severity, cleared, value, threshold, window, evidence)
                self._observe(version, key, feature, detector, kind, v, emitted_at, out)

            n_seg = self._n_segments(version, w)
            perf = checks.performance(cfg, ref, o, window, n_seg, judge)
            if ref is not None and o.labelled >= cfg.min_labelled_count:
                hits = [t for t in oseg.error_detections if t < window[1]]
                oseg.error_detections = [t for t in oseg.error_detections if t >= window[1]]
                if oseg.error_adwin is not None:
                    judge(
                        None, "adwin_error", "performance", "warning" if hits else None,
                        not hits, float(len(hits)), 1.0, {"detections_in_window": len(hits)},
                    )  # fmt: skip
            out.metrics.append(
                MetricsRecord(
                    model_id=self.model_id,
                    model_version=version,
                    segment=segment_of(key),
                    window=Window(iso(window[0]), iso(window[1])),
                    count=0,
                    reference=ref.origin if ref is not None else "none",
                    features={},
                    outputs={},
                    performance=perf,
                    emitted_at=emitted_at,
                    class_performance=checks.realised_performance(cfg, ref, o),
                )
            )


def _error_stream(
    ref: Reference, n: int, correct: int, abs_micro: int, pairs: int
) -> tuple[float, int, int, float] | None:
    """One tick of an outcome monitor's error stream: the standardised value its ADWIN takes
    (unit variance under no change), the events, their error sum (errors of a classifier;
    absolute error in millionths of a regression model) and the reference's mean error.
    ``None`` when the reference cannot standardise it or the tick has no such outcome."""
    if ref.task == "regression":
        mae, sd = ref.segment.mae, ref.segment.error_sd()
        if pairs <= 0 or mae is None or not sd:
            return None
        total = (abs_micro / Z_SCALE - pairs * mae) / sd
        return total / math.sqrt(pairs), pairs, abs_micro, mae
    acc = ref.accuracy
    if acc is None or not 0.0 < acc < 1.0 or n <= 0:
        return None
    err, sd = 1.0 - acc, math.sqrt(acc * (1.0 - acc))
    total = ((n - correct) - n * err) / sd
    return total / math.sqrt(n), n, n - correct, err


def error_stream_evidence(
    task: str,
    history: list[list[int]],
    fed: int,
    kept: int,
    expected: float,
    t: float,
) -> dict[str, Any]:
    """What an error-stream ADWIN saw when it fired, in figures and one sentence.

    ``history`` holds the last ticks fed (``[events, error sum]``, the newest last), ``fed``
    the ticks in the detector's window before the cut and ``kept`` those after it: the error
    of the ticks it dropped ("from") against that of the ticks it kept ("to").

    Examples
    --------
    >>> h = [[10, 1]] * 6 + [[10, 2]] * 2
    >>> ev = error_stream_evidence("classification", h, 8, 2, 0.06, 1704103200.0)
    >>> import textwrap
    >>> print(textwrap.fill(ev["summary"], 90))
    ADWIN on the error stream: error rate rose from 0.1 to 0.2 over the last 20 labelled
    events (2 ticks; reference 0.06; change detected at tick 2024-01-01T10:00:00.000Z)
    """
    scale = Z_SCALE if task == "regression" else 1

    def rate(ticks: list[list[int]]) -> tuple[int, float | None]:
        n = sum(e for e, _ in ticks)
        return n, (sum(x for _, x in ticks) / scale / n if n else None)

    recent = history[-kept:] if kept > 0 else []
    earlier = history[-fed : len(history) - len(recent)] if fed > kept else []
    n_recent, after = rate(recent)
    n_earlier, before = rate(earlier)
    start = expected if before is None else before
    what, stream = (
        ("mean absolute error", "the absolute-error stream")
        if task == "regression"
        else ("error rate", "the error stream")
    )
    after_v = after if after is not None else start
    moved = "rose" if after_v > start else "fell" if after_v < start else "stayed"
    reference = (
        f"reference MAE {expected:.4g}" if task == "regression" else (f"reference {expected:.4g}")
    )
    summary = (
        f"ADWIN on {stream}: {what} {moved} from {start:.4g} to {after_v:.4g} over the last "
        f"{n_recent} labelled events ({len(recent)} ticks; {reference}; change detected at "
        f"tick {iso(t)})"
    )
    key = "mae" if task == "regression" else "error_rate"
    last_n, last = history[-1][0], history[-1][1] / scale / max(history[-1][0], 1)
    evidence: dict[str, Any] = {
        "summary": summary,
        "tick_labelled": last_n,
        f"tick_{key}": round(last, 4),
        f"reference_{key}": round(expected, 4),
        "recent_labelled": n_recent,
        f"recent_{key}": None if after is None else round(after, 4),
        "earlier_labelled": n_earlier,
        f"earlier_{key}": None if before is None else round(before, 4),
        "adwin_width_ticks": kept,
    }
    return evidence


def feature_detector_summary(
    detector: str, feature: str, events: int, mean_sd: float, t: float, extra: dict[str, Any]
) -> str:
    """One sentence on what a feature's tick-level detector saw: the detector fires on the
    stream of tick means, so the figures are the firing tick's, not a window's.

    >>> import textwrap
    >>> text = feature_detector_summary("adwin", "f03", 120, 1.3333, 1704103200.0,
    ...                                 {"adwin_width_ticks": 4})
    >>> print(textwrap.fill(text, 90))
    ADWIN on f03's tick means: change detected at tick 2024-01-01T10:00:00.000Z, whose 120
    events averaged +1.33 reference sd from the reference mean; the detector keeps the last 4
    ticks
    """
    head = {"adwin": "ADWIN", "page_hinkley": "Page-Hinkley"}.get(detector, detector)
    what = "change detected" if detector == "adwin" else "cumulative deviation over its threshold"
    text = (
        f"{head} on {feature}'s tick means: {what} at tick {iso(t)}, whose {events} events "
        f"averaged {mean_sd:+.3g} reference sd from the reference mean"
    )
    if "adwin_width_ticks" in extra:
        text += f"; the detector keeps the last {extra['adwin_width_ticks']} ticks"
    return text
