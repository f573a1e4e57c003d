"""bench/soak.py's report: what it says of the lag after a restart and of the run's counts."""

from __future__ import annotations

from pathlib import Path

from tests.unit.bench_scripts import load_bench

soak = load_bench("soak")

# The lag every 10 s around a restart at minute 10: ~100 in flight before, a peak, then back.
LAGS = [[9.0, 90], [9.5, 120], [9.83, 100], [10.17, 550], [10.33, 300], [10.5, 110], [10.67, 95]]


def test_recovery_is_the_peak_then_the_time_back_within_the_range_before() -> None:
    assert soak._recovery(LAGS, 10.0) == (550, (10.5 - 10.0) * 60)


def test_recovery_is_unknown_when_the_lag_never_came_back() -> None:
    stuck = [[9.5, 100], [10.17, 500], [10.33, 700], [10.5, 900]]
    assert soak._recovery(stuck, 10.0) is None


def test_the_results_section_names_a_mismatch_and_replaces_the_last_one(tmp_path: Path) -> None:
    result = {
        "run": "r1", "minutes": 11.0, "restart_every_min": 10.0, "capacity_events_s": 1000,
        "rate_events_s": 250, "sent": {"predictions": 1000, "labels": 1000},
        "counted_in_windows": 990, "windows": 2, "windows_published_twice": 0, "exact": False,
        "windows_wrong_or_missing": {"2026-12-06T10:01:00": [500, 490]},
        "restarts_at_min": [10.0], "shift_alert_latency_s": [12.0],
        "samples": [
            {"minute": 1.0, "rss_mib": [200.0], "verdict_latency_s": 6.0, "redis_mib": 10.0},
            {"minute": 11.0, "rss_mib": [210.0], "verdict_latency_s": 5.0, "redis_mib": 12.0},
        ],
        "lag_every_10s": [*LAGS, [11.17, 0]],
    }  # fmt: skip
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Soak\n\nan older run\n\n## After\n\nkept\n")
    soak.write_results(result, path)
    text = path.read_text()
    assert "an older run" not in text and text.endswith("## After\n\nkept\n")
    assert "1,000 / 990 (MISMATCH)" in text
    assert "2026-12-06T10:01:00: 500, 490" in text
    assert "550 then 30 s" in text
    assert "| seconds after the traffic stopped until the lag was 0 | 10 |" in text
