"""The replay report: one self-contained HTML page that answers on-call's first questions.

:func:`render_report` turns what a replay produced (``metrics.v1`` records, ``alert.v1`` alerts
and, for the features that drifted, the reference and window histograms) into a page that opens
offline: inline CSS, every chart a matplotlib SVG embedded as a ``data:`` URI, no script, no
network reference. It answers, top to bottom:

1. **Did the prediction distribution shift?** ``prediction_psi`` and ``top1_rate`` per window.
2. **Which features drifted?** Ranked by effect: the largest PSI over the range (any segment),
   with JS and KS of that same window, and the reference-vs-window histogram of the top five.
3. **Which segments are worst?** Per segment: the largest feature PSI, the prediction PSI,
   realised accuracy where labels joined, and the alerts that fired.
4. **When did it start?** Per signal (segment, feature or output, detector), the first window
   where it crossed its threshold (PSI at ``psi.warning``) or fired, on a timeline, then each
   signal's score over time with its thresholds and alert markers.

The analysis (:func:`analyse`) is separate from the drawing, so its rankings can be checked on
their own.

Examples
--------
>>> from streamproc.config import MonitoringConfig
>>> from streamproc.contracts import MetricsRecord, Window
>>> rec = MetricsRecord(model_id="m", model_version="1", segment={"country": "DE"},
...     window=Window("2024-01-01T00:00:00.000Z", "2024-01-01T00:01:00.000Z"), count=900,
...     reference="baseline", features={"f03": {"psi": 0.8, "js": 0.2, "ks": 0.4}},
...     outputs={}, performance={}, emitted_at="x")
>>> a = analyse([rec], [], MonitoringConfig())
>>> a.features[0].feature, a.features[0].segment, round(a.features[0].max_psi, 2)
('f03', 'country=DE', 0.8)
>>> a.signals[0].start
'2024-01-01T00:00:00.000Z'
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from streamproc.config import MonitoringConfig
from streamproc.contracts import (
    Alert,
    ClassPerformance,
    Incident,
    MetricBand,
    MetricsRecord,
    Window,
)
from streamproc.judge import cbpe

__all__ = [
    "Analysis",
    "FeatureHistogram",
    "FeatureRow",
    "SegmentRow",
    "SignalRow",
    "analyse",
    "render_report",
    "segment_text",
]

TOP_HISTOGRAMS = 5
TOP_TIMELINES = 6
TOP_SIGNALS = 20
PREDICTION = "(prediction)"


class FeatureHistogram(msgspec.Struct, frozen=True, kw_only=True):
    """A feature's reference and one window's distribution, bin by bin.

    Numeric features have ``edges`` (the reference's inner bin edges; ``len(edges) + 1`` bins,
    open-ended and right-closed), categorical ones ``categories`` (one per bin).
    """

    model_id: str
    model_version: str
    segment: dict[str, str]
    feature: str
    window: Window
    psi: float
    reference: list[float]  # share per bin
    counts: list[int]  # window count per bin
    edges: list[float] = []
    categories: list[str] = []


def segment_text(segment: Mapping[str, str]) -> str:
    """``"all"`` or ``"country=DE"`` (several dimensions comma-separated).

    >>> segment_text({}), segment_text({"country": "DE"})
    ('all', 'country=DE')
    """
    return ",".join(f"{k}={v}" for k, v in sorted(segment.items())) or "all"


# -- analysis -----------------------------------------------------------------------------------


@dataclass
class FeatureRow:
    """One feature (of one model version) over the whole range, at its largest PSI."""

    model: str
    feature: str
    max_psi: float
    segment: str
    window: str  # start of the window of the largest PSI
    js: float | None
    ks: float | None
    first_crossed: str | None  # first window (any segment) with PSI >= psi.warning
    alerts: int  # firing alerts naming the feature

    @property
    def drifted(self) -> bool:
        """An alert fired on the feature."""
        return self.alerts > 0

    @property
    def crossed(self) -> bool:
        """Its PSI reached ``psi.warning`` somewhere (significant or not)."""
        return self.first_crossed is not None


@dataclass
class SegmentRow:
    """One segment (of one model version) over the whole range."""

    model: str
    segment: str
    events: int
    max_psi: float | None
    max_psi_feature: str | None
    max_psi_window: str | None
    prediction_psi: float | None
    accuracy: float | None  # over every labelled outcome of the range
    min_accuracy: float | None  # the worst window's
    labelled: int
    alerts: int


@dataclass
class SignalRow:
    """One signal: a detector on a feature or output of one segment."""

    model: str
    segment: str
    subject: str  # a feature name, "(prediction)", or the alert kind
    detector: str
    start: str  # window start where it first crossed its threshold or fired
    first_alert: str | None
    peak: float | None
    threshold: float | None
    alerts: list[Alert] = field(default_factory=list)
    crossed: list[str] = field(default_factory=list)  # window starts over the threshold

    @property
    def name(self) -> str:
        return f"{self.segment} · {self.subject} · {self.detector}"


@dataclass
class PerformanceRow:
    """A classifier's figures in one window of all traffic: estimated beside realised."""

    model: str
    window: str
    estimated: ClassPerformance | None = None
    realised: ClassPerformance | None = None

    def unexpected(self) -> list[str]:
        """Figures more than sampling noise away: realised outside the estimate's band, or an
        estimate outside the reference's."""
        out = []
        for m in cbpe.METRICS:
            est = self.estimated.metrics.get(m) if self.estimated else None
            got = self.realised.metrics.get(m) if self.realised else None
            if est is not None and got is not None and not est.lower <= got.value <= est.upper:
                out.append(f"{m}: realised {got.value:.3f} outside the estimate's band")
            ref = self.estimated.reference.get(m) if self.estimated else None
            if est is not None and ref is not None and not ref.lower <= est.value <= ref.upper:
                out.append(f"{m}: estimate {est.value:.3f} outside the reference's band")
        return out


@dataclass
class Analysis:
    """What the report shows, before any drawing."""

    features: list[FeatureRow]
    segments: list[SegmentRow]
    signals: list[SignalRow]
    windows: list[str]  # every window start with metrics, sorted
    events: int
    alerts: list[Alert]
    metrics: list[MetricsRecord]
    performance: list[PerformanceRow] = field(default_factory=list)


def _model(model_id: str, version: str) -> str:
    return f"{model_id}/{version}"


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def analyse(
    metrics: Sequence[MetricsRecord], alerts: Sequence[Alert], cfg: MonitoringConfig
) -> Analysis:
    """Rank features, segments and signals from a replay's records (see the module docstring).

    Parameters
    ----------
    metrics
        ``metrics.v1`` records, in any order.
    alerts
        ``alert.v1`` alerts, in emission order.
    cfg
        The monitoring configuration the records were made with (its thresholds).
    """
    warn = cfg.psi.warning
    firing = [a for a in alerts if a.status == "firing"]
    feats: dict[tuple[str, str], FeatureRow] = {}
    segs: dict[tuple[str, str], SegmentRow] = {}
    signals: dict[tuple[str, str, str, str], SignalRow] = {}
    acc_sum: dict[tuple[str, str], float] = {}
    perf: dict[tuple[str, str], PerformanceRow] = {}
    events = 0
    windows: set[str] = set()

    def signal(model: str, seg: str, subject: str, detector: str, start: str) -> SignalRow:
        key = (model, seg, subject, detector)
        row = signals.get(key)
        if row is None:
            row = signals[key] = SignalRow(model, seg, subject, detector, start, None, None, None)
        row.start = min(row.start, start)
        return row

    ordered = sorted(metrics, key=lambda r: (r.window.start, r.model_id, r.model_version))
    for rec in ordered:
        model, seg, start = (
            _model(rec.model_id, rec.model_version),
            segment_text(rec.segment),
            (rec.window.start),
        )
        srow = segs.get((model, seg))
        if srow is None:
            srow = segs[(model, seg)] = SegmentRow(
                model, seg, 0, None, None, None, None, None, None, 0, 0
            )
        if rec.count:
            windows.add(start)
            srow.events += rec.count
            if seg == "all":
                events += rec.count
        for name, stats in sorted(rec.features.items()):
            psi = _num(stats.get("psi"))
            if psi is None:
                continue
            frow = feats.get((model, name))
            if frow is None or psi > frow.max_psi:
                first = frow.first_crossed if frow is not None else None
                n_alerts = frow.alerts if frow is not None else 0
                frow = feats[(model, name)] = FeatureRow(
                    model, name, psi, seg, start, _num(stats.get("js")), _num(stats.get("ks")),
                    first, n_alerts,
                )  # fmt: skip
            if psi >= warn:
                if frow.first_crossed is None or start < frow.first_crossed:
                    frow.first_crossed = start
                s = signal(model, seg, name, "psi", start)
                s.crossed.append(start)
            if srow.max_psi is None or psi > srow.max_psi:
                srow.max_psi, srow.max_psi_feature, srow.max_psi_window = psi, name, start
        ppsi = _num(rec.outputs.get("prediction_psi"))
        if ppsi is not None:
            srow.prediction_psi = max(srow.prediction_psi or 0.0, ppsi)
            if ppsi >= warn:
                signal(model, seg, PREDICTION, "psi", start).crossed.append(start)
        acc = _num(rec.performance.get("accuracy"))
        labelled = int(_num(rec.performance.get("labelled")) or 0)
        if acc is not None and labelled:
            srow.labelled += labelled
            acc_sum[(model, seg)] = acc_sum.get((model, seg), 0.0) + acc * labelled
            srow.min_accuracy = acc if srow.min_accuracy is None else min(srow.min_accuracy, acc)
        cp = rec.class_performance
        if cp is not None and not rec.segment:
            prow = perf.get((model, start))
            if prow is None:
                prow = perf[(model, start)] = PerformanceRow(model, start)
            if cp.source == "estimated":
                prow.estimated = cp
            else:
                prow.realised = cp
    for key, total in acc_sum.items():
        segs[key].accuracy = total / segs[key].labelled
    for a in firing:
        model, seg = _model(a.model_id, a.model_version), segment_text(a.segment)
        subject = a.feature or (PREDICTION if a.kind == "prediction_drift" else a.kind)
        s = signal(model, seg, subject, a.detector, a.window.start)
        s.first_alert = min(s.first_alert or a.window.start, a.window.start)
        if a.feature is not None and (model, a.feature) in feats:
            feats[(model, a.feature)].alerts += 1
        srow = segs.get((model, seg))
        if srow is not None:
            srow.alerts += 1
    for a in alerts:
        s2 = signals.get(
            (
                _model(a.model_id, a.model_version),
                segment_text(a.segment),
                a.feature or (PREDICTION if a.kind == "prediction_drift" else a.kind),
                a.detector,
            )
        )
        if s2 is not None:
            s2.alerts.append(a)
    _peaks(signals.values(), ordered, cfg)
    return Analysis(
        features=sorted(feats.values(), key=lambda r: (-r.max_psi, r.model, r.feature)),
        segments=sorted(
            segs.values(),
            key=lambda r: (-(r.max_psi or 0.0), -r.alerts, r.model, r.segment),
        ),
        # Signals that alerted first, each group by start: what on-call acts on leads.
        signals=sorted(
            signals.values(),
            key=lambda s: (
                s.first_alert is None,
                s.start,
                -(s.peak or 0.0),
                s.model,
                s.segment,
                s.subject,
                s.detector,
            ),
        ),
        windows=sorted(windows),
        events=events,
        alerts=list(alerts),
        metrics=list(ordered),
        performance=sorted(perf.values(), key=lambda r: (r.model, r.window)),
    )


def _peaks(
    signals: Iterable[SignalRow], ordered: Sequence[MetricsRecord], cfg: MonitoringConfig
) -> None:
    """Each signal's largest value over the range and the threshold it is judged against."""
    for s in signals:
        values = [v for _, v in _series(s, ordered)]
        values += [a.value for a in s.alerts if a.status == "firing"]
        s.peak = max(values) if values else None
        if s.detector == "psi":
            s.threshold = cfg.psi.warning
        elif s.alerts:
            s.threshold = s.alerts[0].threshold


def _series(s: SignalRow, ordered: Sequence[MetricsRecord]) -> list[tuple[str, float]]:
    """The per-window values behind a signal, where the metrics carry them."""
    out = []
    for rec in ordered:
        if _model(rec.model_id, rec.model_version) != s.model:
            continue
        if segment_text(rec.segment) != s.segment or not rec.count:
            continue
        if s.subject == PREDICTION:
            v = _num(rec.outputs.get("prediction_psi" if s.detector == "psi" else "top1_rate"))
        else:
            metric = {"psi": "psi", "ks": "ks", "js": "js"}.get(s.detector)
            row = rec.features.get(s.subject)
            v = _num(row.get(metric)) if row is not None and metric else None
        if v is not None:
            out.append((rec.window.start, v))
    return out


# -- drawing ------------------------------------------------------------------------------------


def _when(iso_text: str) -> datetime:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).astimezone(UTC)


def _utc(iso_text: str | None) -> str:
    if not iso_text:
        return "-"
    return _when(iso_text).strftime("%Y-%m-%d %H:%M:%S")


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _image(fig: Any, alt: str) -> str:
    """The figure as an ``<img>`` holding an SVG data URI (deterministic bytes)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "streamproc-report", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _time_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("window start (UTC)")
    ax.grid(True, alpha=0.3)


_SEVERITY_COLOUR = {"info": "#1f77b4", "warning": "#ff7f0e", "critical": "#d62728"}


def _prediction_chart(an: Analysis, cfg: MonitoringConfig) -> str | None:
    rows = [r for r in an.metrics if r.count and not r.segment]
    psi = [(_when(r.window.start), _num(r.outputs.get("prediction_psi"))) for r in rows]
    top1 = [(_when(r.window.start), _num(r.outputs.get("top1_rate"))) for r in rows]
    psi = [(t, v) for t, v in psi if v is not None]
    top1 = [(t, v) for t, v in top1 if v is not None]
    if not psi and not top1:
        return None
    fig = _figure(9, 3.2)
    ax = fig.add_subplot()
    if psi:
        ax.plot(*zip(*psi, strict=True), marker="o", ms=3, label="prediction PSI (all traffic)")
    ax.axhline(cfg.psi.warning, color="#ff7f0e", ls="--", lw=1, label="PSI warning")
    ax.axhline(cfg.psi.critical, color="#d62728", ls="--", lw=1, label="PSI critical")
    ax.set_ylabel("PSI")
    if top1:
        ax2 = ax.twinx()
        ax2.plot(*zip(*top1, strict=True), color="#2ca02c", marker=".", label="top-1 rate")
        ax2.set_ylabel("top-1 rate")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    _time_axis(ax)
    return _image(fig, "prediction PSI and top-1 rate per window")


def _histogram_chart(h: FeatureHistogram) -> str:
    import numpy as np

    ref = np.asarray(h.reference, dtype=float)
    counts = np.asarray(h.counts, dtype=float)
    window = counts / counts.sum() if counts.sum() else counts
    if h.categories:
        labels = list(h.categories)
    else:
        e = h.edges
        labels = [f"≤{e[0]:.3g}"] if e else ["all"]
        labels += [f"{a:.3g} to {b:.3g}" for a, b in itertools.pairwise(e)]
        labels += [f">{e[-1]:.3g}"] if e else []
    x = np.arange(len(labels))
    fig = _figure(6, 3)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, ref, width=0.4, label="reference", color="#7f7f7f")
    ax.bar(x + 0.2, window, width=0.4, label=f"window {_utc(h.window.start)}", color="#d62728")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of values")
    ax.set_title(
        f"{h.feature} in {segment_text(h.segment)}: PSI {h.psi:.3g} ({int(counts.sum())} values)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return _image(fig, f"{h.feature} reference vs window histogram")


def _most_telling(signals: Sequence[SignalRow], n: int) -> list[SignalRow]:
    """The ``n`` signals that alerted, then the largest peaks, kept in start order."""
    ranked = sorted(
        range(len(signals)),
        key=lambda i: (signals[i].first_alert is None, -(signals[i].peak or 0.0), i),
    )
    return [signals[i] for i in sorted(ranked[:n])]


def _timeline_chart(signals: Sequence[SignalRow], an: Analysis) -> str | None:
    shown = _most_telling(signals, TOP_SIGNALS)
    if not shown:
        return None
    fig = _figure(9, 0.8 + 0.32 * len(shown))
    ax = fig.add_subplot()
    step = None
    if len(an.windows) > 1:
        step = _when(an.windows[1]) - _when(an.windows[0])
    for y, s in enumerate(reversed(shown)):
        for start in s.crossed:
            t = _when(start)
            ax.plot([t, t + step] if step else [t, t], [y, y], color="#ff7f0e", lw=5, alpha=0.6)
        ax.plot([_when(s.start)], [y], "k|", ms=14)
        for a in s.alerts:
            marker = "^" if a.status == "firing" else "o"
            colour = _SEVERITY_COLOUR[a.severity] if a.status == "firing" else "#2ca02c"
            ax.plot([_when(a.window.start)], [y], marker=marker, color=colour, ms=7, ls="none")
    ax.set_yticks(range(len(shown)), [s.name for s in reversed(shown)], fontsize=7)
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.set_title(
        "bars: windows over the threshold · |: start · ▲ firing (orange warning, red critical)"
        " · ● resolved",
        fontsize=8,
    )
    _time_axis(ax)
    return _image(fig, "timeline: when each signal started")


def _signal_chart(s: SignalRow, an: Analysis, cfg: MonitoringConfig) -> str | None:
    series = _series(s, an.metrics)
    if not series and not s.alerts:
        return None
    fig = _figure(9, 2.8)
    ax = fig.add_subplot()
    if series:
        ax.plot(
            [_when(t) for t, _ in series], [v for _, v in series], marker="o", ms=3,
            label=f"{s.detector}",
        )  # fmt: skip
    if s.detector == "psi":
        ax.axhline(cfg.psi.warning, color="#ff7f0e", ls="--", lw=1, label="warning")
        ax.axhline(cfg.psi.critical, color="#d62728", ls="--", lw=1, label="critical")
    elif s.threshold is not None:
        ax.axhline(s.threshold, color="#ff7f0e", ls="--", lw=1, label="threshold")
    for a in s.alerts:
        firing = a.status == "firing"
        ax.plot(
            [_when(a.window.start)], [a.value], marker="^" if firing else "o", ls="none", ms=8,
            color=_SEVERITY_COLOUR[a.severity] if firing else "#2ca02c",
        )  # fmt: skip
    ax.set_title(f"{s.model} · {s.name}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    _time_axis(ax)
    return _image(fig, f"score timeline of {s.name}")


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.hot td { background: #fff1e6; }
.answers { background: #f7f9fc; border: 1px solid #cfd8e3; padding: .6em 1.2em; }
.answers dt { font-weight: 600; margin-top: .4em; } .answers dd { margin-left: 1em; }
.meta td:first-child { font-weight: 600; } img { max-width: 100%; display: block; }
.muted { color: #666; font-size: .9em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(headers: Sequence[str], rows: Iterable[tuple[Sequence[str], dict[str, str]]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for cells, attrs in rows:
        at = "".join(f' {k}="{_e(v)}"' for k, v in attrs.items())
        tds = "".join(
            f'<td class="n">{_e(c)}</td>' if c[:1].isdigit() or c == "-" else f"<td>{_e(c)}</td>"
            for c in cells
        )
        body.append(f"<tr{at}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _incidents(events: Sequence[Incident]) -> str:
    """ "What happened": one row per incident of the range (its latest event).

    >>> _incidents([])
    '<h2>What happened: incidents</h2><p class="muted">No incident in this range.</p>'
    """
    from streamproc.tools.incident_text import cause_text, latest_incidents, root_text

    head = "<h2>What happened: incidents</h2>"
    latest = latest_incidents(events)
    if not latest:
        return head + '<p class="muted">No incident in this range.</p>'
    rows = []
    for i in latest:
        firing = sum(m.status == "firing" for m in i.members)
        cells = [
            f"{i.model_id}/{i.model_version}",
            cause_text(i),
            root_text(i),
            i.severity,
            _utc(i.started_at),
            "open" if i.status != "resolved" else "resolved",
            f"{len(i.members)} ({firing} firing at the end)",
            f"{i.leading.detector} in {segment_text(i.leading.segment)}",
        ]
        rows.append((cells, {"class": "hot"} if i.severity == "critical" else {}))
    note = (
        '<p class="muted">One row per root cause: every alert a change fired (detectors, '
        "severities, overlapping segments) is a member of its incident; the root is the most "
        "specific segment that explains the others.</p>"
    )
    table = _table(
        ["model", "cause", "root cause", "severity", "started (UTC)", "at the end", "alerts",
         "leading alert"],
        rows,
    )  # fmt: skip
    return head + note + table


def _answers(an: Analysis, cfg: MonitoringConfig) -> str:
    warn = cfg.psi.warning
    pred = [s for s in an.signals if s.subject == PREDICTION]
    if pred:
        first = pred[0]
        shift = (
            f"yes: {first.detector} crossed in {first.segment} from window "
            f"{_utc(first.start)} UTC (peak {_fmt(first.peak)})"
        )
    else:
        peak = max(
            (s.prediction_psi for s in an.segments if s.prediction_psi is not None), default=None
        )
        shift = f"no: prediction PSI stayed under {warn:g} (largest {_fmt(peak)})"
    drifted = [f for f in an.features if f.drifted]
    quiet = [f.feature for f in an.features if f.crossed and not f.drifted]
    if drifted:
        top = drifted[0]
        feats = (
            f"{len(drifted)}: {', '.join(f.feature for f in drifted[:5])}"
            f"{', ...' if len(drifted) > 5 else ''}; the largest is {top.feature} "
            f"(PSI {_fmt(top.max_psi)} in {top.segment}, window {_utc(top.window)} UTC)"
        )
    else:
        feats = "none alerted"
    if quiet:
        feats += (
            f". Over PSI {warn:g} without an alert (not significant for the window's size): "
            f"{', '.join(quiet[:5])}{', ...' if len(quiet) > 5 else ''}"
        )
    elif not drifted:
        feats = f"none: no feature reached PSI {warn:g} or alerted"
    worst = an.segments[0] if an.segments else None
    if worst is not None and worst.max_psi is not None and (worst.max_psi >= warn or worst.alerts):
        seg = (
            f"{worst.segment} ({worst.model}): PSI {_fmt(worst.max_psi)} on "
            f"{worst.max_psi_feature}, {worst.alerts} firing alert(s)"
        )
    else:
        seg = "no segment stands out"
    alerted = [s for s in an.signals if s.first_alert is not None]
    began = alerted[0] if alerted else (an.signals[0] if an.signals else None)
    start = (
        f"{_utc(began.start)} UTC: {began.name} ({began.model})"
        if began is not None
        else "nothing crossed a threshold"
    )
    items = [
        ("Did the prediction distribution shift?", shift),
        ("Which features drifted?", feats),
        ("Which segment is worst?", seg),
        ("When did it start?", start),
    ]
    body = "".join(f"<dt>{_e(q)}</dt><dd>{_e(a)}</dd>" for q, a in items)
    return f'<dl class="answers">{body}</dl>'


def _feature_table(an: Analysis) -> str:
    headers = "rank|model|feature|max PSI|segment|window (UTC)|JS|KS|first crossed (UTC)|alerts"
    rows = []
    for i, f in enumerate(an.features[:25]):
        cells = [str(i + 1), f.model, f.feature, _fmt(f.max_psi), f.segment, _utc(f.window)]
        cells += [_fmt(f.js), _fmt(f.ks), _utc(f.first_crossed), str(f.alerts)]
        attrs = {"class": "hot" if f.drifted else "", "data-feature": f.feature}
        rows.append((cells, {**attrs, "data-rank": str(i + 1)}))
    return _table(headers.split("|"), rows)


def _segment_table(an: Analysis, warn: float) -> str:
    headers = (
        "model|segment|events|max feature PSI|on|window (UTC)|max prediction PSI|accuracy|"
        "worst window accuracy|labelled|firing alerts"
    )
    rows = []
    for s in an.segments:
        cells = [s.model, s.segment, str(s.events), _fmt(s.max_psi), s.max_psi_feature or "-"]
        cells += [_utc(s.max_psi_window), _fmt(s.prediction_psi), _fmt(s.accuracy)]
        cells += [_fmt(s.min_accuracy), str(s.labelled), str(s.alerts)]
        hot = (s.max_psi or 0.0) >= warn or s.alerts > 0
        rows.append((cells, {"class": "hot" if hot else "", "data-segment": s.segment}))
    return _table(headers.split("|"), rows)


def _band_text(b: MetricBand | None) -> str:
    return "-" if b is None else f"{b.value:.3f} [{b.lower:.3f}, {b.upper:.3f}]"


def _performance_table(an: Analysis) -> str:
    shown = ("accuracy", "roc_auc", "f1", "precision", "recall")
    headers = ["model", "window (UTC)"]
    for m in shown:
        headers += [f"{m} estimated", f"{m} realised"]
    headers.append("beyond sampling noise")
    rows = []
    for r in an.performance:
        cells = [r.model, _utc(r.window)]
        for m in shown:
            est = r.estimated.metrics.get(m) if r.estimated else None
            got = r.realised.metrics.get(m) if r.realised else None
            cells += [_band_text(est), "-" if got is None else f"{got.value:.3f}"]
        odd = r.unexpected()
        cells.append("; ".join(odd) or "-")
        rows.append((cells, {"class": "hot" if odd else "", "data-window": r.window}))
    return _table(headers, rows)


def _signal_table(an: Analysis) -> str:
    headers = "model|segment|signal|detector|start (UTC)|first alert (UTC)|peak|threshold|alerts"
    rows = []
    for s in an.signals:
        cells = [s.model, s.segment, s.subject, s.detector, _utc(s.start), _utc(s.first_alert)]
        cells += [_fmt(s.peak), _fmt(s.threshold)]
        cells.append(str(sum(a.status == "firing" for a in s.alerts)))
        key = f"{s.segment}|{s.subject}|{s.detector}"
        rows.append((cells, {"data-signal": key, "data-start": s.start}))
    return _table(headers.split("|"), rows)


def render_report(
    metrics: Sequence[MetricsRecord],
    alerts: Sequence[Alert],
    cfg: MonitoringConfig,
    histograms: Sequence[FeatureHistogram] = (),
    context: Sequence[tuple[str, str]] = (),
    title: str = "streamproc replay",
    incidents: Sequence[Incident] = (),
) -> str:
    """The report as one HTML document (see the module docstring).

    Parameters
    ----------
    metrics, alerts
        What the replay emitted.
    cfg
        The monitoring configuration it ran with (thresholds are drawn from it).
    histograms
        Per (model version, segment, feature), a window's histogram; the report shows, for
        each of the five features with the largest PSI, the one of that PSI's segment and
        window.
    context
        ``(label, text)`` rows describing the replay (range, baseline, overrides).
    title
        The page title.
    incidents
        The ``incident.v1`` events of the range: the report opens with them, one row each.
    """
    an = analyse(metrics, alerts, cfg)
    warn = cfg.psi.warning
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    meta = [
        *context,
        ("events", f"{an.events} in {len(an.windows)} window(s)"),
        ("alerts", f"{sum(a.status == 'firing' for a in alerts)} firing, "
                   f"{sum(a.status == 'resolved' for a in alerts)} resolved"),
        ("thresholds", f"PSI warning {warn:g}, critical {cfg.psi.critical:g}; "
                       f"window {cfg.window_s:g} s"),
    ]  # fmt: skip
    parts.append(
        '<table class="meta">'
        + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta)
        + "</table>"
    )
    parts.append(_incidents(incidents))
    parts.append(_answers(an, cfg))

    parts.append("<h2>Did the prediction distribution shift?</h2>")
    chart = _prediction_chart(an, cfg)
    parts.append(chart or '<p class="muted">No prediction distribution in these windows.</p>')

    parts.append("<h2>Which features drifted?</h2>")
    parts.append(
        f'<p class="muted">Ranked by the largest PSI over the range, in any segment; JS and KS '
        f"are of that same window. Highlighted: an alert fired on the feature. Below, the "
        f"reference and the window of the largest PSI, for the top features over PSI {warn:g}."
        f"</p>"
    )
    parts.append(_feature_table(an))
    by_key = {
        (_model(h.model_id, h.model_version), segment_text(h.segment), h.feature, h.window.start): h
        for h in histograms
    }
    shown = 0
    for f in an.features:
        if shown >= TOP_HISTOGRAMS:
            break
        if not f.drifted and not f.crossed:
            continue
        h = by_key.get((f.model, f.segment, f.feature, f.window))
        if h is not None:
            parts.append(_histogram_chart(h))
            shown += 1

    if an.performance:
        parts.append("<h2>Did the model's performance change?</h2>")
        parts.append(
            '<p class="muted">All traffic, per window: estimated from the predictions\' scores '
            "(CBPE, with its sampling-noise band) beside realised from the labels that joined; "
            "binary models report their positive class, multiclass ones the macro average. "
            "Realised outside the estimate's band is what scores cannot explain (labels "
            "changed: concept drift, or a label pipeline problem); an estimate outside the "
            "reference's band is the inputs moving the model.</p>"
        )
        parts.append(_performance_table(an))

    parts.append("<h2>Which segments are worst?</h2>")
    parts.append(_segment_table(an, warn))

    parts.append("<h2>When did it start?</h2>")
    parts.append(
        f'<p class="muted">Per signal, the first window where it crossed its threshold (PSI '
        f"{warn:g}) or fired. A PSI over the threshold without an alert was not significant "
        f"for the window's size.</p>"
    )
    timeline = _timeline_chart(an.signals, an)
    if timeline:
        parts.append(timeline)
    parts.append(
        _signal_table(an) if an.signals else '<p class="muted">No signal crossed its threshold.</p>'
    )
    charts = [
        c for s in _most_telling(an.signals, TOP_TIMELINES) if (c := _signal_chart(s, an, cfg))
    ]
    if charts:
        parts.append("<h3>Scores over time</h3>")
        parts.extend(charts)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
