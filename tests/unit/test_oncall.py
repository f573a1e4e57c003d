"""`alerts tail` and `status` without Kafka: formatting, filters, the status board."""

from __future__ import annotations

import io
import json
import shlex
from typing import Any

import msgspec
import pytest

from streamproc.cli import build_parser
from streamproc.contracts import (
    Alert,
    ClassPerformance,
    MetricBand,
    MetricsRecord,
    Source,
    Window,
    encode,
)
from streamproc.tools import oncall
from streamproc.tools.oncall import (
    StatusBoard,
    decode_record,
    format_alert,
    matches,
    parse_duration,
    render_table,
    replay_command,
    segment_text,
    short_id,
    use_colour,
    window_text,
)


def _alert(**over: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": "9b1c0e77d2a34f5e8c6a",
        "status": "firing",
        "severity": "critical",
        "kind": "feature_drift",
        "model_id": "churn",
        "model_version": "7",
        "feature": "tenure_months",
        "segment": {"device": "ios", "country": "DE"},
        "detector": "psi",
        "value": 0.4127,
        "threshold": 0.25,
        "window": Window("2024-03-05T14:00:00.000Z", "2024-03-05T14:05:00.000Z"),
        "evidence": {"episode_start": "2024-03-05T14:00:00.000Z"},
        "source": Source("predictions", {"0": [100, 250], "3": [90, 180]}),
        "emitted_at": "2024-03-05T14:06:01.000Z",
    }
    fields.update(over)
    return Alert(**fields)


def _metrics(**over: Any) -> MetricsRecord:
    fields: dict[str, Any] = {
        "model_id": "churn",
        "model_version": "7",
        "segment": {"country": "DE", "device": "ios"},
        "window": Window("2024-03-05T14:00:00Z", "2024-03-05T14:05:00Z"),
        "count": 1200,
        "reference": "baseline",
        "features": {
            "tenure_months": {"psi": 0.4127, "js": 0.08},
            "plan": {"psi": 0.021},
            "age": {"psi": None, "null_rate": 0.0},
            "region": {"psi": 0.13},
            "clicks": {"psi": 0.09},
        },
        "outputs": {"top1_rate": 0.71},
        "performance": {},
        "emitted_at": "2024-03-05T14:05:02Z",
    }
    fields.update(over)
    return MetricsRecord(**fields)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- one alert, readably ----------------------------------------------------------------------


def test_format_names_severity_status_model_segment_feature_values_window_and_replay() -> None:
    text = format_alert(_alert())
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["CRITICAL", "FIRING"]
    assert "model churn/7" in lines[0]
    assert "segment country=DE, device=ios" in lines[0]
    assert "feature tenure_months" in lines[0]
    assert "feature_drift by psi: value 0.4127 vs threshold 0.25" in lines[1]
    assert "window 2024-03-05 14:00:00 - 14:05:00 UTC" in lines[2]
    assert lines[3] == (
        "  investigate: streamproc replay --from-alert 9b1c0e77d2a34f5e8c6a --out ./replay-9b1c0e77"
    )
    assert "\033[" not in text


def test_format_of_an_alert_without_feature_or_segment_says_all_and_omits_the_feature() -> None:
    text = format_alert(_alert(feature=None, segment={}, kind="performance", detector="cbpe"))
    assert "segment all" in text and "feature" not in text.splitlines()[0]
    assert "performance by cbpe" in text


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_a_feature_detector_alert_shows_the_tick_mean_it_fired_on_not_a_threshold(
    detector: str,
) -> None:
    alert = _alert(
        detector=detector, severity="warning", value=-1.3333, threshold=0.0,
        evidence={"tick_events": 40, "tick_mean_in_reference_sd": -1.3333},
    )  # fmt: skip
    line = format_alert(alert).splitlines()[1]
    assert line == f"  feature_drift by {detector}: detector fired: tick mean -1.33 sd"


def test_an_error_stream_detector_alert_shows_the_error_rate_against_the_reference() -> None:
    alert = _alert(
        feature=None, kind="performance", detector="adwin_error", value=0.69, threshold=0.9,
        evidence={"tick_error_rate": 0.31, "reference_error_rate": 0.1},
    )  # fmt: skip
    line = format_alert(alert).splitlines()[1]
    assert line.endswith("by adwin_error: detector fired: tick error rate 0.31 (reference 0.1)")
    assert "threshold" not in format_alert(alert)


def test_an_escalated_detector_alert_names_the_statistics_that_agreed() -> None:
    alert = _alert(
        detector="adwin", value=2.0, threshold=1.0,
        evidence={"detections_in_window": 2, "agreeing_statistics": ["psi", "ks"]},
    )  # fmt: skip
    line = format_alert(alert).splitlines()[1]
    assert line == "  feature_drift by adwin: detector fired 2x in the window, confirmed by psi, ks"


def test_colour_marks_the_severity_and_a_resolved_status_only_when_asked() -> None:
    plain = format_alert(_alert(status="resolved", severity="warning"))
    coloured = format_alert(_alert(status="resolved", severity="warning"), colour=True)
    assert "\033[33mWARNING\033[0m" in coloured and "\033[32mRESOLVED\033[0m" in coloured
    assert "\033" not in plain
    stripped = coloured
    for code in ("\033[33m", "\033[32m", "\033[0m"):
        stripped = stripped.replace(code, "")
    assert stripped == plain


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert use_colour(_Tty(), {}) is True
    assert use_colour(io.StringIO(), {}) is False
    assert use_colour(_Tty(), {"NO_COLOR": "1"}) is False


def test_segment_text_sorts_dimensions_and_calls_the_empty_segment_all() -> None:
    assert segment_text({}) == "all"
    assert segment_text({"device": "ios", "country": "DE"}) == "country=DE, device=ios"


def test_window_text_is_utc_whatever_the_offset_and_keeps_a_date_change() -> None:
    assert window_text(Window("2024-03-05T15:00:00+01:00", "2024-03-05T15:05:00+01:00")) == (
        "2024-03-05 14:00:00 - 14:05:00 UTC"
    )
    assert window_text(Window("2024-03-05T23:58:00Z", "2024-03-06T00:03:00Z")) == (
        "2024-03-05 23:58:00 - 2024-03-06 00:03:00 UTC"
    )
    assert window_text(Window("last tuesday", "now")) == "last tuesday - now"


def test_short_id_is_a_safe_directory_name_for_any_alert_id() -> None:
    assert short_id("9b1c0e77d2a34f5e8c6a") == "9b1c0e77"
    assert short_id("0D1E2F3A-4b5c-6d7e-8f90-a1b2c3d4e5f6") == "0d1e2f3a"
    odd = short_id("churn; rm -rf /")
    assert len(odd) == 8 and odd.isalnum()
    assert short_id("churn; rm -rf /") != short_id("churn; rm -rf ~")


def test_replay_command_quotes_an_alert_id_the_shell_would_split() -> None:
    words = shlex.split(replay_command("churn f03 'DE'"))
    assert words[:4] == ["streamproc", "replay", "--from-alert", "churn f03 'DE'"]
    assert words[4] == "--out" and words[5].startswith("./replay-")


# -- filters and decoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minimum", "shown"),
    [
        (None, {"info", "warning", "critical"}),
        ("info", {"info", "warning", "critical"}),
        ("warning", {"warning", "critical"}),
        ("critical", {"critical"}),
    ],
)
def test_severity_filter_shows_that_severity_and_above(minimum: str | None, shown: set) -> None:
    alerts = [_alert(severity=s) for s in ("info", "warning", "critical")]
    assert {a.severity for a in alerts if matches(a, minimum)} == shown


def test_model_filter_compares_the_model_id_exactly() -> None:
    assert matches(_alert(), model="churn")
    assert not matches(_alert(), model="chur")
    assert not matches(_alert(severity="info"), "warning", "churn")


def test_decode_returns_the_alert_or_why_the_message_is_not_one() -> None:
    alert = _alert()
    assert decode_record(encode(alert), Alert) == alert
    assert decode_record(b"\xff\xfe", Alert).startswith("invalid JSON")
    assert decode_record(None, Alert) == "empty message"
    wrong_schema = json.loads(encode(alert))
    wrong_schema["schema"] = "alert.v2"
    assert decode_record(json.dumps(wrong_schema).encode(), Alert).startswith("not alert.v1")
    assert decode_record(encode(_metrics()), Alert).startswith("not alert.v1")
    assert decode_record(encode(_metrics()), MetricsRecord) == _metrics()


def test_json_output_round_trips_as_alert_v1() -> None:
    alert = _alert(evidence={"reference_count": 5000, "bins": [0.1, 0.2]})
    line = encode(alert).decode()
    assert "\n" not in line
    assert msgspec.json.decode(line, type=Alert) == alert
    assert json.loads(line)["schema"] == "alert.v1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("2.5", 2.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "24x", "1h 30m", "-5m", "0", "24h!"])
def test_parse_duration_rejects_what_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# -- the status board -------------------------------------------------------------------------


def test_status_keeps_the_latest_window_per_monitor_whatever_the_read_order() -> None:
    board = StatusBoard()
    later = _metrics(window=Window("2024-03-05T14:05:00Z", "2024-03-05T14:10:00Z"), count=1300)
    board.add_metrics(later)
    board.add_metrics(_metrics())  # an older window from another partition, read later
    (row,) = board.rows()
    assert (row.window_end, row.count) == ("2024-03-05T14:10:00Z", 1300)


def test_status_lists_the_top_features_by_psi_and_skips_features_without_one() -> None:
    board = StatusBoard()
    board.add_metrics(_metrics())
    (row,) = board.rows(top=3)
    assert row.top_psi == [("tenure_months", 0.4127), ("region", 0.13), ("clicks", 0.09)]
    assert [f for f, _ in board.rows(top=10)[0].top_psi] == [
        "tenure_months", "region", "clicks", "plan",
    ]  # fmt: skip


def test_a_resolved_alert_with_a_new_id_ends_the_firing_of_its_signal() -> None:
    board = StatusBoard()
    board.add_metrics(_metrics())
    board.add_alert(_alert(alert_id="a-firing", severity="warning"))
    assert board.rows()[0].firing_text() == "1 warning"
    board.add_alert(_alert(alert_id="a-resolved", severity="warning", status="resolved"))
    assert board.rows()[0].firing == [] and board.rows()[0].firing_text() == "-"


def test_an_escalation_counts_once_at_its_new_severity() -> None:
    board = StatusBoard()
    board.add_metrics(_metrics())
    board.add_alert(_alert(alert_id="w", severity="warning"))
    board.add_alert(_alert(alert_id="c", severity="critical"))
    board.add_alert(_alert(alert_id="p", severity="info", feature="plan"))
    (row,) = board.rows()
    assert row.firing_text() == "1 critical, 1 info"
    assert [a.alert_id for a in row.firing] == ["c", "p"]


def test_a_monitor_with_firing_alerts_but_no_metrics_still_gets_a_row() -> None:
    board = StatusBoard()
    board.add_alert(_alert(model_id="fraud", segment={}, feature=None, kind="volume"))
    (row,) = board.rows()
    assert (row.model_id, row.segment, row.window_end, row.count) == ("fraud", {}, None, None)
    assert render_table([row]).splitlines()[1].split() == [
        "fraud", "7", "all", "-", "-", "-", "-", "1", "critical",
    ]  # fmt: skip


def test_rows_are_sorted_with_the_whole_model_first_and_filtered_by_model() -> None:
    board = StatusBoard()
    board.add_metrics(_metrics(segment={"country": "FR"}))
    board.add_metrics(_metrics(segment={}))
    board.add_metrics(_metrics(model_id="fraud", segment={}))
    board.add_metrics(_metrics(model_version="6", segment={"country": "DE"}))
    assert [(r.model_id, r.model_version, segment_text(r.segment)) for r in board.rows()] == [
        ("churn", "6", "country=DE"),
        ("churn", "7", "all"),
        ("churn", "7", "country=FR"),
        ("fraud", "7", "all"),
    ]
    assert {r.model_id for r in board.rows(model="fraud")} == {"fraud"}
    board.add_alert(_alert(model_id="fraud", segment={}))
    assert board.firing(model="churn") == []


def test_render_table_shows_every_column_for_a_row() -> None:
    board = StatusBoard()
    board.add_metrics(_metrics())
    board.add_alert(_alert())
    header, line = render_table(board.rows()).splitlines()
    assert header.split() == ["MODEL", "VERSION", "SEGMENT", "WINDOW", "END", "(UTC)", "EVENTS",
                              "TOP", "PSI", "PERFORMANCE", "FIRING"]  # fmt: skip
    for cell in ("churn", "country=DE, device=ios", "2024-03-05 14:05:00", "1200",
                 "tenure_months: 0.413, region: 0.13, clicks: 0.09", "1 critical"):  # fmt: skip
        assert cell in line
    assert header.index("EVENTS") == line.index("1200")


def test_status_json_rows_carry_the_firing_alert_ids() -> None:
    board = StatusBoard()
    board.add_metrics(_metrics())
    board.add_alert(_alert())
    doc = json.loads(json.dumps([r.to_json() for r in board.rows(top=1)]))
    assert doc == [
        {
            "model_id": "churn",
            "model_version": "7",
            "segment": {"country": "DE", "device": "ios"},
            "window_end": "2024-03-05T14:05:00Z",
            "count": 1200,
            "top_psi": [{"feature": "tenure_months", "psi": 0.4127}],
            "performance": {},
            "firing": [
                {
                    "alert_id": "9b1c0e77d2a34f5e8c6a",
                    "severity": "critical",
                    "kind": "feature_drift",
                    "feature": "tenure_months",
                    "detector": "psi",
                }
            ],
        }
    ]


# -- the command line -------------------------------------------------------------------------


def test_cli_registers_alerts_tail_and_status_with_their_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["alerts", "tail", "--severity", "warning", "--model", "churn", "--from-beginning",
         "--json", "--max", "5", "--timeout", "2.5"]
    )  # fmt: skip
    assert args.func is oncall.run_tail
    assert (args.severity, args.model, args.from_beginning, args.json, args.max, args.timeout) == (
        "warning", "churn", True, True, 5, 2.5,
    )  # fmt: skip
    args = parser.parse_args(["status", "--model", "churn", "--since", "2h", "--json"])
    assert args.func is oncall.run_status
    assert (args.model, args.since, args.json, args.top) == ("churn", 7200.0, True, 3)
    assert parser.parse_args(["status"]).since == 86400.0


@pytest.mark.parametrize(
    "argv",
    [
        ["alerts", "tail", "--severity", "page"],
        ["alerts", "tail", "--max", "0"],
        ["alerts", "tail", "--timeout", "-1"],
        ["status", "--since", "yesterday"],
        ["alerts"],
    ],
)
def test_cli_rejects_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_status_shows_realised_performance_beside_the_latest_estimate() -> None:
    def figures(source: str, acc: float, auc: float) -> ClassPerformance:
        return ClassPerformance(
            source=source, classes=["no", "yes"], positive_class="yes", count=1000,  # type: ignore[arg-type]
            metrics={"accuracy": MetricBand(acc, acc - 0.02, acc + 0.02),
                     "roc_auc": MetricBand(auc, auc - 0.01, auc + 0.01)},
            reference={}, confusion_matrix=[[1.0, 0.0], [0.0, 1.0]],
        )  # fmt: skip

    board = StatusBoard()
    board.add_metrics(_metrics(class_performance=figures("estimated", 0.9, 0.96)))
    later = Window("2024-03-05T14:05:00Z", "2024-03-05T14:10:00Z")
    board.add_metrics(_metrics(window=later, class_performance=figures("estimated", 0.88, 0.95)))
    # a label window, read after: it ends earlier, but is the latest realised figure
    board.add_metrics(
        _metrics(count=0, features={}, class_performance=figures("realised", 0.71, 0.8))
    )
    (row,) = board.rows()
    assert row.performance_text() == "accuracy 0.710 (est 0.880), roc_auc 0.800 (est 0.950)"
    doc = row.to_json()["performance"]
    assert doc["estimated"]["metrics"]["accuracy"] == {"value": 0.88, "lower": 0.86, "upper": 0.9}
    assert doc["realised"]["source"] == "realised"


def test_a_detector_alert_with_a_summary_says_what_the_detector_saw_over_how_many_events() -> None:
    summary = (
        "ADWIN on the error stream: error rate rose from 0.06 to 0.2 over the last 420 labelled "
        "events (6 ticks; reference 0.1; change detected at tick 2024-01-01T10:00:00.000Z)"
    )
    alert = _alert(
        feature=None, kind="performance", detector="adwin_error", value=0.8, threshold=0.9,
        evidence={"summary": summary, "tick_error_rate": 0.2, "reference_error_rate": 0.1},
    )  # fmt: skip
    line = format_alert(alert).splitlines()[1]
    assert line == f"  performance by adwin_error: {summary}"
    assert "threshold" not in format_alert(alert)
