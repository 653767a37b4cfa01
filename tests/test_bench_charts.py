"""make bench's charts: PNGs drawn from the results it records, linked from latest.md."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from bench import charts, rate, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _size(path: Path) -> tuple[int, int]:
    """A PNG's width and height, from its header chunk (IHDR comes first)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.endswith(b"IEND\xaeB`\x82")  # written to the end
    return width, height


def _limited(rate_per_s: float, burst: float, seconds: float) -> list[float]:
    """Arrival times of a saturated limit: the burst at once, then one every 1/rate."""
    steady = int(rate_per_s * seconds)
    return [0.0] * int(burst) + [(i + 1) / rate_per_s for i in range(steady)]


def _rate_row(rate_per_s: float, burst: float) -> dict[str, Any]:
    times = _limited(rate_per_s, burst, 1.0)
    return {
        "configured": rate_per_s,
        "achieved": rate.achieved(times, burst),
        "ratio": 1.0,
        "worst_window": rate.worst_windows(times, rate_per_s, burst),
        "burst": burst,
        "per_10ms": rate.per_bin(times),
    }


def _round(base: float) -> dict[str, Any]:
    return {"p50_ms": base, "p75_ms": base * 1.2, "p90_ms": base * 1.5, "p99_ms": base * 3}


def _results() -> dict[str, Any]:
    throughput = {
        f"{name}_c{conns}": {"runs": [_round(base * conns / 8), _round(base * conns / 6)]}
        for name, base in (("direct", 0.06), ("nginx_proxy", 0.2), ("proxy", 0.9))
        for conns in (8, 64)
    }
    detail = {"limiter_1000": _rate_row(1000, 50), "proxy_10000": _rate_row(10000, 500)}
    return {"throughput": throughput, "rate_accuracy_detail": detail}


def test_arrivals_are_kept_as_counts_per_10_ms_from_the_first() -> None:
    """per_bin counts each arrival once, in the 10 ms slot it fell in, empty slots too."""
    assert rate.per_bin([5.0, 5.001, 5.012, 5.035, 5.0349]) == "2 1 0 2"
    counts = rate.per_bin(_limited(1000, 50, 1.0)).split()
    assert sum(map(int, counts)) == 1050
    assert counts[:2] == ["59", "10"]  # the burst, then the rate


def test_both_charts_are_written_as_png_and_linked_from_the_report(tmp_path: Path) -> None:
    """From a run's results: the rate timeline (two rows of panels, one per scenario) and
    the latency percentiles (a panel per connection count), each a whole PNG, and latest.md
    links both."""
    written = charts.write(_results(), tmp_path)
    assert set(written) == {charts.RATE_CHART, charts.LATENCY_CHART}
    assert _size(tmp_path / charts.RATE_CHART) == (1200, 560)
    assert _size(tmp_path / charts.LATENCY_CHART) == (1200, 450)
    markdown = report.table({}, written)
    assert f"({charts.RATE_CHART})" in markdown
    assert f"({charts.LATENCY_CHART})" in markdown


def test_results_without_the_arrival_series_draw_no_rate_chart(tmp_path: Path) -> None:
    """Results recorded before the series was kept (or without the scenarios) draw only
    what they have data for, and latest.md links only that."""
    results = _results()
    for row in results["rate_accuracy_detail"].values():
        del row["per_10ms"]
    assert charts.write(results, tmp_path) == {
        charts.LATENCY_CHART: "Latency percentiles: the proxy against nginx and direct"
    }
    assert not (tmp_path / charts.RATE_CHART).exists()
    assert charts.write({}, tmp_path / "x") == {}
    assert "Charts" not in report.table({}, {})
