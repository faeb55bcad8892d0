"""Compiled per-window loops (numba): the parts of the analysis that are many small steps.

Why: an ingest worker analyses every patient's last 8-10 s of PPG and ECG once a second. In
numpy that is a few dozen calls on arrays of a few hundred samples per patient, and each call
costs microseconds before it computes anything: measured in one worker, these steps were about
0.25 ms of its ~0.75 ms per patient-second. Here the same steps are plain loops compiled once
(`cache=True`: the machine code is kept in ``__pycache__`` and reused by later processes).

The same goes for two steps of a batch's waveform samples outside the analysis: reading them
from the messages' JSON (`json_ints_k`, for `ingest.decode.decode_many`) and packing them as
varints for storage (`ingest.lines.pack_many`), here so that there is one place for compiled
code and one warm-up.

Rules of this file:
- Pure functions of arrays and numbers; no Python objects in or out, no I/O.
- Each kernel is the one implementation of its step: the public functions in `ecg`, `ppg`
  and `similarity` call these, for one window or for many.
- Integer parameters derived with Python's ``round`` (half to even) are computed by the caller
  and passed in, so that nothing depends on how numba rounds.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "beat_similarity_k",
    "block_minima_k",
    "ecg_rate_k",
    "ecg_sqi_k",
    "af_score_k",
    "hrv_k",
    "json_ints_k",
    "pack_runs_k",
    "peak_to_peak_k",
    "ppg_peaks_k",
    "ppg_pi_k",
    "ppg_rate_k",
    "ppg_rows_k",
    "qrs_candidates_k",
    "qrs_front_k",
    "qrs_measure_k",
    "resp_peak_k",
    "resp_series_k",
    "sosfiltfilt_rows_k",
    "warm",
]

_Arr = npt.NDArray[np.float64]
_IArr = npt.NDArray[np.int64]


@njit(cache=True, nogil=True)
def beat_similarity_k(signal: _Arr, peaks: _IArr, before: int, after: int) -> float:
    """`similarity.beat_similarity`, NaN where that returns None."""
    n = signal.size
    m = 0
    for p in peaks:
        if p - before >= 0 and p + after <= n:
            m += 1
    width = before + after
    if m < 3 or width < 3:
        return math.nan
    seg = np.empty((m, width))
    i = 0
    for p in peaks:
        if p - before >= 0 and p + after <= n:
            mean = 0.0
            for j in range(width):
                v = signal[p - before + j]
                seg[i, j] = v
                mean += v
            mean /= width
            ss = 0.0
            for j in range(width):
                v = seg[i, j] - mean
                seg[i, j] = v
                ss += v * v
            scale = 1.0 / (math.sqrt(ss) + 1e-12)
            for j in range(width):
                seg[i, j] *= scale
            i += 1
    corr = np.empty((m, m))
    for a in range(m):
        corr[a, a] = -math.inf
        for b in range(a + 1, m):
            c = 0.0
            for j in range(width):
                c += seg[a, j] * seg[b, j]
            corr[a, b] = c
            corr[b, a] = c
    k = max(1, int(math.ceil(0.25 * (m - 1))))
    total = 0.0
    for a in range(m):
        row = np.sort(corr[a])
        total += row[m - k]
    return total / m


@njit(cache=True, nogil=True)
def ecg_sqi_k(
    raw: _Arr,
    bp: _Arr,
    peaks: _IArr,
    blk: int,
    before: int,
    after: int,
    qrs_lo: int,
    qrs_hi: int,
    flat_uv: float,
    rail_uv: float,
    quiet_uv: float,
    quiet_sqi: float,
    snr_lo: float,
    snr_hi: float,
    sim_lo: float,
    sim_hi: float,
) -> float:
    """`ecg._sqi_core` (the formulas are explained there): 1 s blocks for leads off, then the
    in-band QRS prominence and the beats' likeness."""
    n = raw.size
    if n == 0:
        return 0.0
    n_blocks = max(1, n // blk)
    good = np.empty(n, dtype=np.bool_)
    n_good = 0
    for b in range(n_blocks):
        lo = b * blk
        hi = n if b == n_blocks - 1 else lo + blk
        top = raw[lo]
        bottom = raw[lo]
        railed = 0
        for i in range(lo, hi):
            v = raw[i]
            top = max(top, v)
            bottom = min(bottom, v)
            if abs(v) >= rail_uv:
                railed += 1
        ok = not (top - bottom < flat_uv or railed > 0.1 * (hi - lo))
        for i in range(lo, hi):
            good[i] = ok
        if ok:
            n_good += hi - lo
    if n_good == 0:
        return 0.0
    good_frac = n_good / n
    m = 0
    for p in peaks:
        if 0 <= p < n and good[p]:
            m += 1
    p_good = np.empty(m, dtype=np.int64)
    m = 0
    for p in peaks:
        if 0 <= p < n and good[p]:
            p_good[m] = p
            m += 1
    similarity = beat_similarity_k(bp, p_good, before, after)
    if math.isnan(similarity):
        energy = 0.0
        for i in range(n):
            if good[i]:
                energy += bp[i] * bp[i]
        quiet = math.sqrt(energy / n_good) < quiet_uv
        return good_frac * (quiet_sqi if quiet else 0.0)
    # QRS mask: qrs_lo samples before each R peak to qrs_hi after it
    inside = np.zeros(n, dtype=np.bool_)
    for p in p_good:
        for i in range(max(int(p) - qrs_lo, 0), min(int(p) + qrs_hi, n)):
            inside[i] = True
    e_in = e_out = 0.0
    n_in = n_out = 0
    for i in range(n):
        if good[i]:
            e = bp[i] * bp[i]
            if inside[i]:
                e_in += e
                n_in += 1
            else:
                e_out += e
                n_out += 1
    if n_out == 0 or n_in == 0:
        return 0.0
    ratio = (e_in / n_in) / max(e_out / n_out, 1e-12)
    db = 10.0 * math.log10(max(ratio, 1e-12))
    prominence = min(max((db - snr_lo) / (snr_hi - snr_lo), 0.0), 1.0)
    likeness = min(max((similarity - sim_lo) / (sim_hi - sim_lo), 0.0), 1.0)
    return good_frac * min(prominence, likeness)


@njit(cache=True, nogil=True)
def ecg_rate_k(
    peaks: _IArr, fs: float, stop: int, window: float, max_intervals: int, min_intervals: int
) -> tuple[float, float, int]:
    """`ecg.ecg_rate` (explained there) of the peaks up to `stop`: (rate in bpm or NaN, longest
    pause in ms, index in `peaks` of the first beat whose interval ends in the window)."""
    m = 0
    while m < peaks.size and peaks[m] <= stop:
        m += 1
    if m == 0:
        return math.nan, stop / fs, 0
    start = stop - window
    first = 1  # the first interval (ending at peaks[first]) inside the window
    while first < m and not peaks[first] > start:
        first += 1
    open_ms = (stop - peaks[m - 1]) * 1000.0 / fs
    longest = 0.0
    for i in range(first, m):
        longest = max(longest, (peaks[i] - peaks[i - 1]) * (1000.0 / fs))
    pause_ms = max(longest, open_ms)
    if peaks[m - 1] <= start:  # no beat in the window: the open interval is the pause
        pause_ms = open_ms
    hr = math.nan
    recent = min(m - first, max_intervals)
    if recent >= min_intervals:
        total = 0.0
        for i in range(m - recent, m):
            total += (peaks[i] - peaks[i - 1]) * (1000.0 / fs)
        mean_rr = total / recent
        if open_ms > 1.5 * mean_rr:
            mean_rr = (total + open_ms) / (recent + 1)
        hr = 60_000.0 / mean_rr
    return hr, pause_ms / 1000.0, first


@njit(cache=True, nogil=True)
def _moving_sum_same(y: _Arr, width: int) -> _Arr:
    """Sum over ``y[i - width // 2 : i + (width - 1) // 2 + 1]`` (zero outside), like
    ``np.convolve(y, ones(width), "same")``, as a running sum."""
    n = y.size
    out = np.empty(n)
    lo_off = width // 2
    hi_off = (width - 1) // 2
    s = 0.0
    for i in range(min(hi_off, n)):  # the window ending at sample hi_off - 1 for output -1
        s += y[i]
    for i in range(n):
        add = i + hi_off
        if add < n:
            s += y[add]
        drop = i - lo_off - 1
        if drop >= 0:
            s -= y[drop]
        out[i] = s
    return out


@njit(cache=True, nogil=True)
def ppg_peaks_k(s: _Arr, n_peak: int, n_beat: int, min_gap: int) -> _IArr:
    """Elgendi's two-moving-average systolic peak detector on an upward band-passed PPG
    (Elgendi et al., PLoS ONE 8(10):e76585, 2013): blocks where the short average of the squared
    positive signal exceeds the long one (plus 2 % of its mean) at least `n_peak` samples long; the
    peak of a block is its maximum; of two peaks closer than `min_gap` the larger is kept."""
    n = s.size
    y = np.empty(n)
    total = 0.0
    for i in range(n):
        v = s[i] if s[i] > 0 else 0.0
        y[i] = v * v
        total += y[i]
    offset = 0.02 * (total / n) if n else 0.0
    ma_peak = _moving_sum_same(y, n_peak) / n_peak
    ma_beat = _moving_sum_same(y, n_beat) / n_beat
    peaks = np.empty(n, dtype=np.int64)
    m = 0
    i = 0
    while i < n:
        if not ma_peak[i] > ma_beat[i] + offset:
            i += 1
            continue
        lo = i
        while i < n and ma_peak[i] > ma_beat[i] + offset:
            i += 1
        if i - lo < n_peak:
            continue
        k = lo
        for j in range(lo + 1, i):
            if s[j] > s[k]:
                k = j
        if m and k - peaks[m - 1] < min_gap:
            if s[k] > s[peaks[m - 1]]:
                peaks[m - 1] = k
            continue
        peaks[m] = k
        m += 1
    return peaks[:m].copy()


@njit(cache=True, nogil=True)
def ppg_rate_k(peaks: _IArr, fs: float, min_intervals: int) -> float:
    """`ppg.ppg_rate`, NaN where that returns None."""
    if peaks.size - 1 < min_intervals or peaks.size < 2:
        return math.nan
    intervals = np.empty(peaks.size - 1)
    for i in range(peaks.size - 1):
        intervals[i] = float(peaks[i + 1] - peaks[i])
    mid = np.median(intervals)
    total = 0.0
    count = 0
    for v in intervals:
        if abs(v - mid) <= 0.3 * mid:
            total += v
            count += 1
    if count == 0:  # no two intervals agree (an even count split far apart): no rate
        return math.nan
    return 60.0 * fs / (total / count)


@njit(cache=True, nogil=True)
def _smallest(a: _Arr, m: int) -> _Arr:
    """The `m` smallest values of `a`, ascending (one pass with a small sorted buffer: a
    percentile near either end without sorting the whole window)."""
    buf = np.empty(m)
    count = 0
    for v in a:
        if count < m:
            j = count
            count += 1
        elif v < buf[m - 1]:
            j = m - 1
        else:
            continue
        while j > 0 and buf[j - 1] > v:
            buf[j] = buf[j - 1]
            j -= 1
        buf[j] = v
    return buf[:count]


@njit(cache=True, nogil=True)
def ppg_pi_k(ac: _Arr, dc: float) -> float:
    """Perfusion index: the 2.5-97.5 percentile range (linear, as np.percentile) over DC, in %."""
    n = ac.size
    if n < 2 or dc <= 0:
        return 0.0
    pos_lo, pos_hi = 0.025 * (n - 1), 0.975 * (n - 1)
    k_lo, k_hi = min(int(pos_lo), n - 2), min(int(pos_hi), n - 2)
    low = _smallest(ac, k_lo + 2)  # sorted[k_lo], sorted[k_lo + 1] are its last two
    high = -_smallest(-ac, n - k_hi)  # the n - k_hi largest, descending: sorted[k_hi] is the last
    lo = float(low[k_lo] + (low[k_lo + 1] - low[k_lo]) * (pos_lo - k_lo))
    hi = float(high[n - k_hi - 1] + (high[n - k_hi - 2] - high[n - k_hi - 1]) * (pos_hi - k_hi))
    return 100.0 * (hi - lo) / dc


@njit(cache=True, nogil=True)
def _ramp(x: float, lo: float, hi: float) -> float:
    return min(max((x - lo) / (hi - lo), 0.0), 1.0)


@njit(cache=True, nogil=True)
def ppg_rows_k(
    ac: _Arr,
    up: _Arr,
    dc_red: _Arr,
    dc_ir: _Arr,
    fs: float,
    n_peak: int,
    n_beat: int,
    min_gap: int,
    limits: _Arr,
) -> tuple[_IArr, _IArr, _Arr, _Arr, _Arr, _Arr]:
    """Per window (row): IR peaks, perfusion index, SQI, pulse rate and the ratio of ratios R.

    `ac` holds the 0.5-5 Hz band-passed red windows then the IR ones (2k rows), `up` the
    upward 0.5-8 Hz IR (k rows). `limits` = (min DC, max DC, PI zero, PI full, PI max,
    likeness lo, hi, red/IR correlation lo, hi). Returns (peaks of all rows end to end, their
    row ends, PI %, SQI, rate in bpm or NaN, R or NaN); the formulas are explained in `ppg`.
    """
    k = up.shape[0]
    pi = np.empty(k)
    sqi = np.empty(k)
    rate = np.empty(k)
    ratio = np.empty(k)
    ends = np.empty(k, dtype=np.int64)
    parts = []
    total = 0
    for j in range(k):
        ac_red, ac_ir, up_ir = ac[j], ac[k + j], up[j]
        peaks = ppg_peaks_k(up_ir, n_peak, n_beat, min_gap)
        parts.append(peaks)
        total += peaks.size
        ends[j] = total
        pi[j] = ppg_pi_k(ac_ir, dc_ir[j])
        rate[j] = ppg_rate_k(peaks, fs, 2)
        n = ac_red.size
        ss_red = ss_ir = cross = 0.0
        for i in range(n):
            ss_red += ac_red[i] * ac_red[i]
            ss_ir += ac_ir[i] * ac_ir[i]
            cross += ac_red[i] * ac_ir[i]
        rms_red = math.sqrt(ss_red / n) if n else 0.0
        rms_ir = math.sqrt(ss_ir / n) if n else 0.0
        if dc_red[j] <= 0 or dc_ir[j] <= 0 or rms_ir <= 0:
            ratio[j] = math.nan
        else:
            ratio[j] = (rms_red / dc_red[j]) / (rms_ir / dc_ir[j])
        # SQI
        q = 0.0
        finger = limits[0] <= dc_ir[j] <= limits[1] and limits[0] / 4 <= dc_red[j] <= limits[1]
        if finger and pi[j] <= limits[4]:
            pulsatile = _ramp(pi[j], limits[2], limits[3])
            if pulsatile > 0.0 and peaks.size >= 3:
                gaps = np.empty(peaks.size - 1)
                for i in range(peaks.size - 1):
                    gaps[i] = float(peaks[i + 1] - peaks[i])
                interval = int(np.median(gaps))
                likeness = beat_similarity_k(
                    up_ir, peaks, _round_half_even(0.4 * interval), _round_half_even(0.6 * interval)
                )
                if not math.isnan(likeness):
                    den = math.sqrt(ss_red) * math.sqrt(ss_ir)
                    rho = cross / den if den > 0 else 0.0
                    q = pulsatile * min(
                        _ramp(likeness, limits[5], limits[6]), _ramp(rho, limits[7], limits[8])
                    )
        sqi[j] = q
    flat = np.empty(total, dtype=np.int64)
    start = 0
    for j in range(k):
        flat[start : ends[j]] = parts[j]
        start = ends[j]
    return flat, ends, pi, sqi, rate, ratio


@njit(cache=True, nogil=True)
def _round_half_even(x: float) -> int:
    """Python's ``round(x)``: halves go to the even neighbour."""
    f = math.floor(x)
    d = x - f
    if d > 0.5 or (d == 0.5 and f % 2 == 1):
        return int(f) + 1
    return int(f)


@njit(cache=True, nogil=True)
def qrs_front_k(
    x: _Arr, sos: _Arr, zi: _Arr, deriv: _Arr, tail_d: _Arr, mwi: _Arr, tail_f: _Arr, out: _Arr, at: int
) -> None:
    """The QRS detector's front end over the next samples: band-pass (second-order sections, the
    arithmetic of scipy's `sosfilt`), derivative and squared moving-window integration (causal
    FIRs). Writes the samples, band-passed, derivative and MWI into rows 0-3 of `out` from
    column `at`; `zi` and the FIR tails (the last ``len(h) - 1`` inputs) are updated in place,
    so any chunking of the stream gives the same outputs."""
    n = x.size
    bp = out[1, at : at + n]
    for t in range(n):
        cur = x[t]
        out[0, at + t] = cur
        for k in range(sos.shape[0]):
            new = sos[k, 0] * cur + zi[k, 0]
            zi[k, 0] = sos[k, 1] * cur - sos[k, 4] * new + zi[k, 1]
            zi[k, 1] = sos[k, 2] * cur - sos[k, 5] * new
            cur = new
        bp[t] = cur
    d = _fir_k(bp, deriv, tail_d)
    sq = np.empty(n)
    for t in range(n):
        out[2, at + t] = d[t]
        sq[t] = d[t] * d[t]
    out[3, at : at + n] = _fir_k(sq, mwi, tail_f)


@njit(cache=True, nogil=True)
def block_minima_k(f: _Arr, start: int, size: int, count: int) -> _Arr:
    """Minimum of each of `count` consecutive blocks of `size` samples of `f` from `start`."""
    out = np.empty(count)
    for b in range(count):
        lo = start + b * size
        m = f[lo]
        for i in range(lo + 1, lo + size):
            m = min(m, f[i])
        out[b] = m
    return out


@njit(cache=True, nogil=True)
def _fir_k(x: _Arr, h: _Arr, tail: _Arr) -> _Arr:
    """Causal FIR ``y[t] = sum_j h[j] x[t - j]`` given the ``len(h) - 1`` inputs before `x` in
    `tail` (updated in place)."""
    m = h.size
    keep = m - 1
    n = x.size
    y = np.empty(n)
    for t in range(n):
        acc = 0.0
        for j in range(m):
            k = t - j
            acc += h[j] * (x[k] if k >= 0 else tail[keep + k])
        y[t] = acc
    if n >= keep:
        for j in range(keep):
            tail[j] = x[n - keep + j]
    else:
        for j in range(keep - n):
            tail[j] = tail[j + n]
        for j in range(n):
            tail[keep - n + j] = x[j]
    return y


@njit(cache=True, nogil=True)
def qrs_candidates_k(f: _Arr, lo: int, hi: int, pb: int, floor: float) -> _IArr:
    """Indices ``i`` in ``lo..hi`` (inclusive) where `f` (the MWI) has a local maximum above
    `floor` that is larger than the `pb` samples before it and at least the `pb` after it."""
    out = np.empty(max(0, hi - lo + 1), dtype=np.int64)
    m = 0
    for i in range(lo, hi + 1):
        v = f[i]
        if not (v > f[i - 1] and v >= f[i + 1] and v > floor):
            continue
        ok = True
        for k in range(max(0, i - pb), i):
            if f[k] >= v:
                ok = False
                break
        if ok:
            for k in range(i + 1, min(i + pb + 1, f.size)):
                if f[k] > v:
                    ok = False
                    break
        if ok:
            out[m] = i
            m += 1
    return out[:m].copy()


@njit(cache=True, nogil=True)
def qrs_measure_k(
    f: _Arr, d: _Arr, bp: _Arr, x: _Arr, i: int, n_mwi: int, look: int, gd: int, ref: int
) -> tuple[float, float, int]:
    """At MWI peak `i` (buffer index): its height, the steepest derivative within the MWI
    window before it, and the R peak (buffer index): the band-pass extremum within `look`
    samples before `i`, moved back by the band-pass delay `gd` onto the largest raw
    deflection within `ref` samples from the straight line joining the raw signal
    ``2 ref`` samples on each side (which removes baseline wander)."""
    slope = 0.0
    for k in range(max(0, i - n_mwi), i + 1):
        slope = max(slope, abs(d[k]))
    lo = max(0, i - look)
    j = lo
    for k in range(lo + 1, i + 1):
        if abs(bp[k]) > abs(bp[j]):
            j = k
    k = j - gd
    w_lo, w_hi = max(0, k - 2 * ref), min(x.size, k + 2 * ref + 1)
    size = w_hi - w_lo
    if size < 8:
        return f[i], slope, max(k, 0)
    a = (x[w_lo] + x[w_lo + 1] + x[w_lo + 2]) / 3.0
    b = (x[w_hi - 1] + x[w_hi - 2] + x[w_hi - 3]) / 3.0
    step = (b - a) / (size - 1)
    s0, s1 = max(0, k - ref - w_lo), min(size, max(1, k + ref + 1 - w_lo))
    best, best_dev = s0, -1.0
    for t in range(s0, s1):
        dev = abs(x[w_lo + t] - (a + step * t))
        if dev > best_dev:
            best, best_dev = t, dev
    return f[i], slope, w_lo + best


_FILT_BLOCK = 16  # rows filtered side by side: a block's padded window stays in the L2 cache


@njit(cache=True, nogil=True)
def _sosfilt_block(sos: _Arr, buf: _Arr, zi_unit: _Arr, reverse: bool) -> None:
    """`scipy.signal.sosfilt` along axis 0 of ``buf`` (samples x signals) in place, each column
    started at rest at its first sample (``zi = zi_unit * first``); with `reverse`, over the
    samples in reverse order. Per column, scipy's arithmetic; the loop over columns is innermost,
    so it runs on several signals at once (SIMD)."""
    m, cols = buf.shape
    sections = sos.shape[0]
    z0 = np.empty((sections, cols))
    z1 = np.empty((sections, cols))
    cur = np.empty(cols)
    first = m - 1 if reverse else 0
    for k in range(sections):
        for c in range(cols):
            z0[k, c] = zi_unit[k, 0] * buf[first, c]
            z1[k, c] = zi_unit[k, 1] * buf[first, c]
    for i in range(m):
        t = m - 1 - i if reverse else i
        for c in range(cols):
            cur[c] = buf[t, c]
        for k in range(sections):
            b0, b1, b2, a1, a2 = sos[k, 0], sos[k, 1], sos[k, 2], sos[k, 4], sos[k, 5]
            for c in range(cols):
                v = b0 * cur[c] + z0[k, c]
                z0[k, c] = b1 * cur[c] - a1 * v + z1[k, c]
                z1[k, c] = b2 * cur[c] - a2 * v
                cur[c] = v
        for c in range(cols):
            buf[t, c] = cur[c]


@njit(cache=True, nogil=True)
def sosfiltfilt_rows_k(sos: _Arr, x: _Arr, zi_unit: _Arr, padlen: int, offset: _Arr) -> _Arr:
    """``scipy.signal.sosfiltfilt(sos, x - offset[:, None], axis=1, padtype="odd", padlen=padlen)``
    (``zi_unit = sosfilt_zi(sos)``): the rows of `x`, each less its `offset` (a row's mean, to
    centre it), filtered `_FILT_BLOCK` rows at a time."""
    rows, n = x.shape
    m = n + 2 * padlen
    out = np.empty((rows, n))
    for r0 in range(0, rows, _FILT_BLOCK):
        cols = min(_FILT_BLOCK, rows - r0)
        buf = np.empty((m, cols))
        for c in range(cols):
            r = r0 + c
            for t in range(n):
                buf[padlen + t, c] = x[r, t] - offset[r]
            first, last = buf[padlen, c], buf[padlen + n - 1, c]
            for t in range(padlen):  # odd extension: the signal mirrored through its end points
                buf[t, c] = 2.0 * first - buf[2 * padlen - t, c]
                buf[padlen + n + t, c] = 2.0 * last - buf[padlen + n - 2 - t, c]
        _sosfilt_block(sos, buf, zi_unit, False)
        _sosfilt_block(sos, buf, zi_unit, True)
        for c in range(cols):
            for t in range(n):
                out[r0 + c, t] = buf[padlen + t, c]
    return out


@njit(cache=True, nogil=True)
def _rhythm_k(rr: _Arr, lo: float, hi: float) -> _Arr:
    m = 0
    out = np.empty(rr.size)
    for v in rr:
        if lo <= v <= hi:
            out[m] = v
            m += 1
    return out[:m]


@njit(cache=True, nogil=True)
def hrv_k(rr_ms: _Arr, lo: float, hi: float, min_rr: int) -> tuple[float, float, int]:
    """`hrv.hrv_time_domain` (explained there): (SDNN, RMSSD, intervals used); NaNs with fewer
    than `min_rr` intervals within ``lo..hi`` ms."""
    rr = _rhythm_k(rr_ms, lo, hi)
    n = rr.size
    if n < min_rr or n < 2:
        return math.nan, math.nan, n
    mean = 0.0
    for v in rr:
        mean += v
    mean /= n
    ss = 0.0
    sd = 0.0
    for i in range(n):
        ss += (rr[i] - mean) ** 2
        if i:
            sd += (rr[i] - rr[i - 1]) ** 2
    return math.sqrt(ss / (n - 1)), math.sqrt(sd / (n - 1)), n


@njit(cache=True, nogil=True)
def af_score_k(rr_ms: _Arr, params: _Arr) -> float:
    """`hrv.af_score` (explained there); NaN with too few intervals. `params` = (RR lo, hi,
    fewest intervals, trim per 128, nRMSSD lo, hi, entropy lo, hi, turning-point SDs)."""
    rr_all = _rhythm_k(rr_ms, params[0], params[1])
    rr = rr_all[max(0, rr_all.size - 128) :]
    n = rr.size
    if n < params[2]:
        return math.nan
    k = max(1, _round_half_even(params[3] * n / 128))
    if n - 2 * k < 3:
        return math.nan
    order = np.argsort(rr, kind="mergesort")  # stable: of equal intervals, the earlier first
    keep = np.sort(order[k : n - k])
    m = keep.size
    trimmed = np.empty(m)
    for i in range(m):
        trimmed[i] = rr[keep[i]]
    total = 0.0
    low = high = trimmed[0]
    for v in trimmed:
        total += v
        low = min(low, v)
        high = max(high, v)
    ss = 0.0
    turns = 0
    for i in range(1, m):
        d = trimmed[i] - trimmed[i - 1]
        ss += d * d
        if i + 1 < m and d * (trimmed[i + 1] - trimmed[i]) < 0:
            turns += 1
    nrmssd = math.sqrt(ss / (m - 1)) / (total / m)
    # 16 equal bins from min to max, the last one closed (np.histogram's)
    hist = np.zeros(16, dtype=np.int64)
    span = high - low
    for v in trimmed:
        b = min(int((v - low) * (16.0 / span)), 15) if span > 0 else 0
        hist[b] += 1
    entropy = 0.0
    for c in hist:
        if c:
            p = c / m
            entropy -= p * math.log(p)
    entropy /= math.log(16)
    expected, sd = 2.0 * (m - 2) / 3.0, math.sqrt((16.0 * m - 29.0) / 90.0)
    score = min(_ramp(nrmssd, params[4], params[5]), _ramp(entropy, params[6], params[7]))
    return score if abs(turns - expected) <= params[8] * sd else 0.5 * score


@njit(cache=True, nogil=True)
def resp_series_k(grid: _Arr, t: _Arr, y: _Arr, hann: _Arr) -> _Arr:
    """A beat series for `resp.ecg_resp_rate`'s spectrum: ``np.interp(grid, t, y)`` (numpy's
    arithmetic) less its least-squares line, times `hann`; empty if `y` does not vary (standard
    deviation at most 1e-6 of its mean: a paced rhythm's RR carries no breathing)."""
    n, m = grid.size, t.size
    mean = 0.0
    for v in y:
        mean += v
    mean /= m
    var = 0.0
    for v in y:
        var += (v - mean) ** 2
    if math.sqrt(var / m) <= 1e-6 * abs(mean):
        return np.empty(0)
    v = np.empty(n)
    j = 0
    for i in range(n):
        x = grid[i]
        if x >= t[m - 1]:
            v[i] = y[m - 1]
            continue
        if x <= t[0]:
            v[i] = y[0]
            continue
        while t[j + 1] <= x:
            j += 1
        if t[j] == x:
            v[i] = y[j]
            continue
        slope = (y[j + 1] - y[j]) / (t[j + 1] - t[j])
        r = slope * (x - t[j]) + y[j]
        if math.isnan(r):
            r = slope * (x - t[j + 1]) + y[j + 1]
            if math.isnan(r) and y[j] == y[j + 1]:
                r = y[j]
        v[i] = r
    gm = 0.0
    vm = 0.0
    for i in range(n):
        gm += grid[i]
        vm += v[i]
    gm /= n
    vm /= n
    num = 0.0
    den = 0.0
    for i in range(n):  # no trend: the least-squares line, in closed form
        dx = grid[i] - gm
        num += dx * (v[i] - vm)
        den += dx * dx
    slope = num / max(den, 1e-300)
    for i in range(n):
        v[i] = (v[i] - vm - slope * (grid[i] - gm)) * hann[i]
    return v


@njit(cache=True, nogil=True)
def resp_peak_k(
    power: _Arr, totals: _Arr, f: _Arr, b0: int, b1: int, near_hz: float, min_share: float
) -> float:
    """`resp.ecg_resp_rate`'s peak: the rows of `power` (spectra) normalised by `totals` and
    averaged; the highest bin of ``b0..b1`` (the band), refined by a parabola through the log
    power, in Hz; NaN if the band has no power or the power within `near_hz` of the peak is less
    than `min_share` of the band's."""
    rows, bins = power.shape
    avg = np.zeros(bins)
    for r in range(rows):
        for i in range(bins):
            avg[i] += power[r, i] / totals[r] if totals[r] > 0 else power[r, i]
    for i in range(bins):
        avg[i] /= rows
    band = 0.0
    k = b0
    for i in range(b0, b1 + 1):
        band += avg[i]
        if avg[i] > avg[k]:
            k = i
    if band <= 0:
        return math.nan
    near = 0.0
    for i in range(b0, b1 + 1):
        if abs(f[i] - f[k]) <= near_hz:
            near += avg[i]
    if near < min_share * band:
        return math.nan
    shift = 0.0
    if 0 < k < bins - 1:  # parabolic interpolation of the peak
        y0 = math.log(avg[k - 1] + 1e-20)
        y1 = math.log(avg[k] + 1e-20)
        y2 = math.log(avg[k + 1] + 1e-20)
        den = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / den if den != 0 else 0.0
    return float(f[k] + max(-0.5, min(0.5, shift)) * (f[1] - f[0]))


@njit(cache=True, nogil=True)
def pack_runs_k(x: _IArr, lengths: _IArr) -> tuple[npt.NDArray[np.uint8], _IArr]:
    """`ingest.lines.pack_many` (explained there) of the runs laid end to end in `x`, before
    base64: the varint bytes of all runs in one buffer and where each run's bytes end. Raises
    ValueError for a difference that needs more than 5 varint bytes (2**35 or more after zigzag)."""
    out = np.empty(5 * x.size, dtype=np.uint8)
    ends = np.empty(lengths.size, dtype=np.int64)
    m = 0
    at = 0
    for j in range(lengths.size):
        prev = 0
        for i in range(at, at + lengths[j]):
            d = x[i] - prev
            prev = x[i]
            z = np.uint64((d << 1) ^ (d >> 63))  # zigzag: small magnitudes -> small codes
            if z >= np.uint64(1) << np.uint64(35):
                raise ValueError("sample differences beyond 2**34 cannot be packed")
            while z >= np.uint64(0x80):
                out[m] = np.uint8((z & np.uint64(0x7F)) | np.uint64(0x80))
                z >>= np.uint64(7)
                m += 1
            out[m] = np.uint8(z)
            m += 1
        at += lengths[j]
        ends[j] = m
    return out[:m], ends


@njit(cache=True, nogil=True)
def peak_to_peak_k(x: _Arr) -> float:
    """``x.max() - x.min()`` of a non-empty array, NaN if it holds one (numpy's two reductions
    cost more on a QRS's few dozen samples than the loop)."""
    lo = hi = x[0]
    for v in x:
        if math.isnan(v):
            return math.nan
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    return float(hi - lo)


@njit(cache=True, nogil=True)
def json_ints_k(
    buf: npt.NDArray[np.uint8], starts: _IArr, ends: _IArr, lo: _IArr, hi: _IArr, most: int, out: _IArr
) -> tuple[_IArr, npt.NDArray[np.bool_]]:
    """JSON arrays of integers, `buf[starts[j]:ends[j]]` each, read into `out` end to end.

    Reads only what is certainly valid: ``[`` integers ``]``, JSON whitespace around the
    integers and commas, each integer ``-?(0|[1-9][0-9]*)`` of at most 9 digits within
    ``lo[j]..hi[j]``, 1 to `most` of them. Anything else (empty, a fraction, an exponent, a
    leading zero, junk) is not read: ``ok[j]`` False and nothing of it left in `out`. Returns
    each array's count (0 where not read) and `ok`. `out` holds, for each array, ``min(its
    length // 2 + 1, most)`` values (an integer and its comma take 2 bytes).
    (msgspec has parsed these arrays as JSON before; the syntax is checked here again all the same,
    so that this reads nothing it was not certain of on its own.)
    """
    counts = np.zeros(starts.size, dtype=np.int64)
    ok = np.zeros(starts.size, dtype=np.bool_)
    k = 0
    for j in range(starts.size):
        i, e, first = starts[j], ends[j], k
        good = e - i >= 3 and buf[i] == 91 and buf[e - 1] == 93  # [ ... ]
        i += 1
        e -= 1  # the closing bracket
        while good and i < e and (buf[i] == 32 or buf[i] == 9 or buf[i] == 10 or buf[i] == 13):
            i += 1
        while good:
            neg = i < e and buf[i] == 45  # -
            if neg:
                i += 1
            if i >= e or buf[i] < 48 or buf[i] > 57:
                good = False
                break
            if buf[i] == 48 and i + 1 < e and 48 <= buf[i + 1] <= 57:
                good = False  # a leading zero is not JSON
                break
            v = 0
            digits = 0
            while i < e and 48 <= buf[i] <= 57:
                v = v * 10 + (buf[i] - 48)
                i += 1
                digits += 1
            if digits > 9 or k - first >= most:
                good = False
                break
            if neg:
                v = -v
            if v < lo[j] or v > hi[j]:
                good = False
                break
            out[k] = v
            k += 1
            while i < e and (buf[i] == 32 or buf[i] == 9 or buf[i] == 10 or buf[i] == 13):
                i += 1
            if i == e:
                break
            if buf[i] != 44:  # ,
                good = False
                break
            i += 1
            while i < e and (buf[i] == 32 or buf[i] == 9 or buf[i] == 10 or buf[i] == 13):
                i += 1
        if good:
            counts[j] = k - first
            ok[j] = True
        else:
            k = first
    return counts, ok


def warm() -> None:
    """Compile (or load from the cache) every kernel now, not on a patient's first message."""
    x = np.sin(np.arange(800) * 0.08) * 1000.0
    peaks = np.array([50, 130, 210, 290, 370], dtype=np.int64)
    beat_similarity_k(x, peaks, 10, 20)
    ecg_sqi_k(x, x, peaks, 250, 10, 20, 12, 40, 10.0, 30000.0, 25.0, 0.5, 3.0, 8.0, 0.6, 0.9)
    ppg_rate_k(peaks, 100.0, 2)
    ecg_rate_k(peaks, 250.0, 700, 2500.0, 12, 2)
    rr = 800.0 + 40.0 * np.sin(np.arange(64.0))
    hrv_k(rr, 200.0, 2500.0, 8)
    af_score_k(rr, np.array([200.0, 2500.0, 32.0, 8.0, 0.05, 0.1, 0.55, 0.75, 2.0]))
    ppg_rows_k(
        np.stack((x, x)), x[None, :], np.ones(1) * 1e5, np.ones(1) * 1e5, 100.0, 11, 67, 25,
        np.array([20_000.0, 250_000.0, 0.05, 0.2, 25.0, 0.75, 0.92, 0.5, 0.85]),
    )  # fmt: skip
    sos = np.array([[1.0, 0.0, -1.0, 1.0, -1.5, 0.7]])
    h = np.ones(5) / 5
    buf = np.zeros((4, x.size))
    qrs_front_k(x, sos, np.zeros((1, 2)), h, np.zeros(4), h, np.zeros(4), buf, 0)
    block_minima_k(buf[3], 0, 62, 4)
    qrs_candidates_k(buf[3], 1, 700, 30, 0.0)
    qrs_measure_k(buf[3], buf[2], buf[1], x, 400, 37, 39, 10, 10)
    sosfiltfilt_rows_k(np.vstack((sos, sos)), np.stack((x, x)), np.zeros((2, 2)), 200, np.zeros(2))
    pack_runs_k(x.astype(np.int64), np.array([300, 0, 500], dtype=np.int64))
    peak_to_peak_k(x[:31])
    text = np.frombuffer(b"[1, -2,3][4]", dtype=np.uint8)
    bounds = np.array([-9, -9], dtype=np.int64)
    json_ints_k(text, np.array([0, 9]), np.array([9, 12]), bounds, -bounds, 9, np.empty(7, dtype=np.int64))
    beats = np.cumsum(rr) / 1000.0
    grid = np.arange(beats[0], beats[-1], 0.25)
    series = resp_series_k(grid, beats, x[: beats.size], np.ones(grid.size))
    resp_peak_k(
        np.abs(np.fft.rfft(series[None, :], 512)) ** 2, np.ones(1), np.arange(257) / 128.0, 13, 96, 0.03, 0.5
    )
