"""ECG/PPG strips: the picture's scale is ECG paper's (25 mm/s, 10 mm/mV, 1 and 5 mm grid).

The signals here are synthetic steps and ramps, chosen so that positions can be computed exactly.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from dashboards.station.strips import MM_PER_MV, MM_PER_S, Mark, Segment, render_strip

NS = {"s": "http://www.w3.org/2000/svg"}
T0 = 1_795_597_200.0


def _points(el: ET.Element) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (p.split(",") for p in el.attrib["points"].split())]


def _svg(**kw: object) -> ET.Element:
    return ET.fromstring(render_strip(**kw))  # type: ignore[arg-type]


def test_one_second_is_25_mm_and_one_millivolt_is_10_mm() -> None:
    # 250 Hz: 1 s at 0 µV, then 1 s at +1000 µV (1 mV).
    ecg = [Segment(T0, 250.0, [0] * 250 + [1000] * 250)]
    svg = _svg(start=T0, end=T0 + 2.0, ecg=ecg)
    assert svg.attrib["width"] == "60mm" and svg.attrib["viewBox"].startswith("0 0 60 ")  # 10 + 2 s × 25
    (trace,) = svg.findall("s:polyline", NS)[:1]
    pts = _points(trace)
    assert len(pts) == 500
    assert pts[1][0] - pts[0][0] == pytest.approx(MM_PER_S / 250, abs=0.006)
    assert pts[250][0] - pts[0][0] == pytest.approx(MM_PER_S, abs=0.006)  # one second later
    assert pts[0][1] - pts[300][1] == pytest.approx(MM_PER_MV)  # 1 mV higher is 10 mm up


def test_the_grid_has_1_mm_and_5_mm_lines_and_a_1_mv_calibration_pulse() -> None:
    svg = _svg(start=T0, end=T0 + 2.0, ecg=[Segment(T0, 250.0, [0] * 500)])
    minor = svg.find("s:path[@class='grid-minor']", NS)
    major = svg.find("s:path[@class='grid-major']", NS)
    assert minor is not None and major is not None
    xs_major = sorted({float(x) for x in re.findall(r"M([\d.]+) [\d.]+v", major.attrib["d"])})
    xs_minor = sorted({float(x) for x in re.findall(r"M([\d.]+) [\d.]+v", minor.attrib["d"])})
    assert xs_major[:4] == [0, 5, 10, 15] and xs_minor[:4] == [1, 2, 3, 4]
    cal = svg.find("s:path[@class='calibration']", NS)
    assert cal is not None
    # h1 v-10 h5 v10 h1: 10 mm (1 mV) high, 5 mm (0.2 s at 25 mm/s) wide
    assert re.search(r"v-10h5v10", cal.attrib["d"])


def test_missing_samples_leave_a_labelled_hole_not_a_line_across() -> None:
    ecg = [Segment(T0, 250.0, [100] * 250), Segment(T0 + 2.0, 250.0, [100] * 250)]  # 1 s missing
    svg = _svg(start=T0, end=T0 + 3.0, ecg=ecg)
    traces = svg.findall("s:polyline", NS)
    assert len(traces) == 2
    assert _points(traces[1])[0][0] - _points(traces[0])[-1][0] == pytest.approx(25.0 + 0.1, abs=0.01)
    assert "no data" in [t.text for t in svg.findall("s:text", NS)]
    # Consecutive frames join into one trace.
    joined = _svg(
        start=T0, end=T0 + 2.0, ecg=[Segment(T0, 250.0, [0] * 250), Segment(T0 + 1.0, 250.0, [0] * 250)]
    )
    assert len(joined.findall("s:polyline", NS)) == 1


def test_marks_flags_and_missing_streams_are_written_out() -> None:
    ecg = [Segment(T0, 250.0, [0] * 500, ("leads_off",))]
    svg = _svg(start=T0, end=T0 + 2.0, ecg=ecg, marks=[Mark(T0 + 1.0, "alarm raised 14:00:01")],
               title="Bed 2 <script>", tz="Asia/Karachi")  # fmt: skip
    texts = [t.text for t in svg.findall("s:text", NS)]
    assert (
        "alarm raised 14:00:01" in texts and "leads off" in texts and "no PPG stored for this time" in texts
    )
    assert any(t and t.startswith("Bed 2 <script>") for t in texts)  # escaped: it parsed as text
    (line,) = svg.findall("s:line[@class='mark']", NS)
    assert float(line.attrib["x1"]) == pytest.approx(10 + 25.0)
    assert "14:00:00" in texts  # time labels in the site's time zone (UTC+5)


def test_ppg_is_drawn_inverted_and_scaled_into_its_row() -> None:
    ir = [120_000 - (500 if (i // 50) % 2 else 0) for i in range(200)]  # 100 Hz square wave
    svg = _svg(start=T0, end=T0 + 2.0, ecg=[], ppg=[Segment(T0, 100.0, ir)])
    (trace,) = svg.findall("s:polyline", NS)
    pts = _points(trace)
    assert pts[1][0] - pts[0][0] == pytest.approx(MM_PER_S / 100, abs=0.006)
    ys = [y for _, y in pts]
    assert max(ys) - min(ys) <= 25.0
    assert ys[75] < ys[25]  # fewer counts (more blood) is drawn higher
