"""The replay report on a small hand-built scenario: rankings, start windows, embedded charts."""

from __future__ import annotations

import base64
import re

from streamproc.config import MonitoringConfig
from streamproc.contracts import Alert, ClassPerformance, MetricBand, MetricsRecord, Source, Window
from streamproc.judge.alerts import iso
from streamproc.tools.report import FeatureHistogram, analyse, render_report

CFG = MonitoringConfig(window_s=60.0, tick_s=5.0)
T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
SEGMENTS = ({}, {"country": "DE"}, {"country": "FR"})
SHIFT_FROM = 3  # f03 moves in country=DE from the fourth window on


def window(i: int) -> Window:
    return Window(iso(T0 + 60 * i), iso(T0 + 60 * (i + 1)))


def f03_psi(segment: dict[str, str], i: int) -> float:
    if i < SHIFT_FROM:
        return 0.01
    return {"DE": 0.92, "FR": 0.015}.get(segment.get("country", ""), 0.21)


def metrics() -> list[MetricsRecord]:
    out = []
    for i in range(8):
        for seg in SEGMENTS:
            out.append(
                MetricsRecord(
                    model_id="churn",
                    model_version="7",
                    segment=dict(seg),
                    window=window(i),
                    count=900 if seg else 3000,
                    reference="baseline",
                    features={
                        "f01": {"psi": 0.02 + 0.001 * i, "js": 0.004, "ks": 0.02},
                        # f07 crosses the threshold once in FR without being significant
                        "f07": {"psi": 0.12 if (i, seg) == (5, {"country": "FR"}) else 0.03},
                        "f03": {"psi": f03_psi(seg, i), "js": 0.3, "ks": 0.41},
                        "c0": {"psi": 0.005, "js": 0.001},
                    },
                    outputs={"prediction_psi": 0.01, "top1_rate": 0.7},
                    performance={},
                    emitted_at="2024-01-01T01:00:00.000Z",
                )
            )
        out.append(
            MetricsRecord(
                model_id="churn",
                model_version="7",
                segment={"country": "DE"},
                window=window(i),
                count=0,
                reference="baseline",
                features={},
                outputs={},
                performance={"labelled": 300, "accuracy": 0.9 if i < SHIFT_FROM else 0.8},
                emitted_at="2024-01-01T01:00:00.000Z",
            )
        )
    return out


def alert(status: str, severity: str, i: int, value: float) -> Alert:
    return Alert(
        alert_id=f"{status}-{severity}-{i}",
        status=status,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        kind="feature_drift",
        model_id="churn",
        model_version="7",
        feature="f03",
        segment={"country": "DE"},
        detector="psi",
        value=value,
        threshold=0.1,
        window=window(i),
        evidence={"episode_start": iso(T0 + 60 * SHIFT_FROM)},
        source=Source("predictions", {"0": [10, 20]}),
        emitted_at="2024-01-01T01:00:00.000Z",
    )


ALERTS = [alert("firing", "critical", SHIFT_FROM, 0.92), alert("resolved", "critical", 7, 0.01)]


def histograms() -> list[FeatureHistogram]:
    return [
        FeatureHistogram(
            model_id="churn", model_version="7", segment={"country": "DE"}, feature="f03",
            window=window(SHIFT_FROM), psi=0.92, edges=[-1.0, 0.0, 1.0],
            reference=[0.16, 0.34, 0.34, 0.16], counts=[10, 90, 300, 500],
        ),
        FeatureHistogram(
            model_id="churn", model_version="7", segment={}, feature="c0", window=window(0),
            psi=0.005, categories=["a", "b"], reference=[0.5, 0.5], counts=[1400, 1600],
        ),
    ]  # fmt: skip


def test_features_rank_by_largest_psi_with_the_segment_and_window_it_happened_in() -> None:
    an = analyse(metrics(), ALERTS, CFG)
    ranked = [f.feature for f in an.features]
    assert ranked[0] == "f03" and ranked[1] == "f07"
    top = an.features[0]
    assert (top.segment, top.window) == ("country=DE", window(SHIFT_FROM).start)
    assert top.first_crossed == window(SHIFT_FROM).start
    assert top.alerts == 1
    f07 = an.features[1]
    assert f07.crossed and not f07.drifted  # over the threshold once, no alert
    c0 = next(f for f in an.features if f.feature == "c0")
    assert not c0.crossed and not c0.drifted


def test_worst_segment_is_the_shifted_one_with_its_label_accuracy() -> None:
    an = analyse(metrics(), ALERTS, CFG)
    worst = an.segments[0]
    assert worst.segment == "country=DE"
    assert worst.max_psi_feature == "f03"
    assert worst.labelled == 8 * 300
    assert abs(worst.accuracy - (3 * 0.9 + 5 * 0.8) / 8) < 1e-12
    assert worst.min_accuracy == 0.8
    assert worst.alerts == 1


def test_signal_start_is_its_first_window_over_the_threshold() -> None:
    signals = {
        (s.segment, s.subject, s.detector): s for s in analyse(metrics(), ALERTS, CFG).signals
    }
    de = signals[("country=DE", "f03", "psi")]
    assert de.start == de.first_alert == window(SHIFT_FROM).start
    assert len(de.crossed) == 8 - SHIFT_FROM and de.peak == 0.92
    # all traffic crossed too (diluted), without an alert of its own
    assert signals[("all", "f03", "psi")].first_alert is None
    assert signals[("country=FR", "f07", "psi")].start == window(5).start
    assert ("country=FR", "f03", "psi") not in signals


def _render() -> str:
    context = [("range", "predictions partitions 0-5")]
    return render_report(metrics(), ALERTS, CFG, histograms(), context, title="replay of test")


def test_report_names_feature_segment_and_start_window() -> None:
    page = _render()
    first = re.search(r'<tr class="hot" data-feature="([^"]+)" data-rank="1">', page)
    assert first is not None and first.group(1) == "f03"
    worst = re.search(r'data-segment="([^"]+)"', page)
    assert worst is not None and worst.group(1) == "country=DE"
    start = re.search(r'data-signal="country=DE\|f03\|psi" data-start="([^"]+)"', page)
    assert start is not None and start.group(1) == window(SHIFT_FROM).start
    answers = page[page.index('<dl class="answers">') : page.index("</dl>")]
    assert "1: f03; the largest is f03 (PSI 0.92 in country=DE" in answers
    assert "without an alert (not significant for the window&#x27;s size): f07" in answers
    assert "2024-01-01 00:03:00 UTC" in answers  # when it started, readably


def test_report_embeds_every_chart_as_an_svg_data_uri_and_references_nothing_outside() -> None:
    page = _render()
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/svg+xml;base64,") for s in sources)
    # prediction chart, one histogram (c0 did not drift), timeline, signal timelines
    assert len(sources) >= 4
    for src in sources:
        svg = base64.b64decode(src.split(",", 1)[1])
        assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    assert 'alt="f03 reference vs window histogram"' in page
    assert 'alt="f07 reference vs window histogram"' not in page  # no histogram was kept
    assert 'alt="c0 reference vs window histogram"' not in page  # never crossed
    text = re.sub(r'src="data:[^"]*"', "", page)
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "<script" not in text and "<link" not in text


def test_report_bytes_do_not_depend_on_when_it_was_rendered() -> None:
    assert _render() == _render()


def test_quiet_range_says_nothing_drifted() -> None:
    quiet = [m for m in metrics() if m.window.start < window(SHIFT_FROM).start]
    quiet = [m for m in quiet if m.segment != {"country": "FR"} or m.window != window(5)]
    page = render_report(quiet, [], CFG)
    assert "none: no feature reached PSI 0.1 or alerted" in page
    assert "<h3>Scores over time</h3>" not in page
    assert "no: prediction PSI stayed under 0.1" in page
    assert "nothing crossed a threshold" in page


def _figures(source: str, acc: float) -> ClassPerformance:
    band = MetricBand(acc, acc - 0.02, acc + 0.02)
    return ClassPerformance(
        source=source,  # type: ignore[arg-type]
        classes=["no", "yes"],
        positive_class="yes",
        count=1000,
        metrics={"accuracy": band},
        reference={"accuracy": MetricBand(0.9, 0.88, 0.92)},
        confusion_matrix=[[500.0, 50.0], [50.0, 400.0]],
    )


def test_report_marks_realised_performance_outside_the_estimate_band() -> None:
    records = []
    for i in range(4):
        # labels change from window 2 on; the scores do not: the estimate stays
        realised = 0.9 if i < 2 else 0.7
        for source, acc in (("estimated", 0.9), ("realised", realised)):
            records.append(
                MetricsRecord(
                    model_id="churn",
                    model_version="7",
                    segment={},
                    window=window(i),
                    count=1000 if source == "estimated" else 0,
                    reference="baseline",
                    features={},
                    outputs={},
                    performance={},
                    emitted_at="2024-01-01T01:00:00.000Z",
                    class_performance=_figures(source, acc),
                )
            )
    an = analyse(records, [], CFG)
    assert [r.window for r in an.performance] == [window(i).start for i in range(4)]
    assert [bool(r.unexpected()) for r in an.performance] == [False, False, True, True]
    page = render_report(records, [], CFG)
    assert (
        "Did the model&#x27;s performance change?" in page or "Did the model's performance" in page
    )
    hot = re.findall(r'<tr class="hot" data-window="([^"]+)">', page)
    assert hot == [window(2).start, window(3).start]
    assert "accuracy: realised 0.700 outside the estimate&#x27;s band" in page
