# On-device QRS detector for the ECG patch: heart rate and RR intervals for Heart Rate
# Measurement 0x2A37, from 250 Hz single-lead ECG in microvolts.
#
# Method: Pan J, Tompkins WJ. "A real-time QRS detection algorithm." IEEE Trans Biomed Eng
# 32(3):230-236, 1985, in integer arithmetic at 250 Hz:
#   low-pass   5-sample moving sum (zeros at 50 and 100 Hz: mains and its harmonic at 250 Hz)
#   high-pass  the low-passed signal minus its 33-sample (132 ms) moving mean, delayed to match
#   slope      five-point derivative, then squared (scaled to keep every sum a small int)
#   integrate  150 ms moving window
#   decide     adaptive signal/noise peak levels (SPKI/NPKI), threshold NPKI + (SPKI - NPKI) / 4,
#              200 ms refractory period, T-wave test (360 ms, half the previous QRS slope) and a
#              search-back at half threshold after 1.66 x the mean RR.
# The R peak is placed at the largest band-passed deflection of the QRS (either polarity), so
# RR intervals are beat to beat, not integration-window to window.
#
# Rules of this file:
# - update() runs once per sample in the sampling path: small ints and preallocated arrays only,
#   no allocation (measured in tests/firmware). Per-second reporting (vitals()) may allocate.
# - The detector knows nothing of BLE: it hands out beats (sample index of R, RR in samples);
#   the patch turns them into 0x2A37 with hr and rr_1024.

from array import array

from micropython import const

_FS = const(250)
_LP_N = const(5)  # low-pass moving sum length
_HP_N = const(33)  # high-pass moving mean length (odd: a centre sample exists)
_HP_DELAY = const(16)
_MWI_N = const(38)  # 150 ms integration window
_HIST = const(512)  # band-passed signal and slope history, 2 s (power of two)
_HMASK = const(511)
_DELAY = const(18)  # band-pass delay from raw ECG to the band-passed signal (2 + 16)
_REFRACTORY = const(50)  # 200 ms
_TWAVE = const(90)  # 360 ms
_LEARN = const(500)  # 2 s learning period after a (re)start
_SLOPE_MAX = const(4000)  # derivative clamp after scaling: keeps the integrated sum < 2**30
_LATENCY = const(75)  # a beat is known up to 300 ms after its R peak (integration, fall to half)
_RR_N = const(8)  # RR intervals kept for the rate and the search-back
_BEATS_N = const(16)  # beats waiting to be reported
_HR_WINDOW = const(2000)  # 8 s: no beat in this long and the rate is unknown (0)
_REBASE = const(0x10000000)  # sample counters are moved back by this much before they leave
# the small-int range (a multiple of _HIST, so the history indices stay put); 12 days at 250 Hz


class QrsDetector:
    def __init__(self):
        self.lp_buf = array("i", [0] * _LP_N)
        self.hp_buf = array("i", [0] * _HP_N)  # low-passed history for the high-pass
        self.bp = array("i", [0] * _HIST)  # band-passed history (for the R peak)
        self.slope = array("i", [0] * _HIST)  # |derivative| history (for the T-wave test)
        self.mwi_buf = array("i", [0] * _MWI_N)
        self.rr = array("i", [0] * _RR_N)  # recent RR intervals, samples
        self.beat_k = array("i", [0] * _BEATS_N)  # detected beats waiting to be taken:
        self.beat_rr = array("i", [0] * _BEATS_N)  # R sample index and RR (0: first beat)
        self.beats_total = 0
        self.beats_w = 0
        self.beats_r = 0
        self.k = 0  # stream sample index of the next sample (skips included; kept by reset())
        self.reset()

    def reset(self):
        """Forget everything (leads came back on): relearn thresholds for 2 s."""
        # One call per array: a tuple of them would allocate, and this runs in the sampling path.
        _zero(self.lp_buf)
        _zero(self.hp_buf)
        _zero(self.bp)
        _zero(self.slope)
        _zero(self.mwi_buf)
        self.n = 0  # samples since reset
        self.lp_i = 0
        self.lp_sum = 0
        self.hp_i = 0
        self.hp_sum = 0
        self.mwi_i = 0
        self.mwi_sum = 0
        self.d1 = self.d2 = self.d3 = self.d4 = 0  # band-passed samples n-1..n-4
        self.prev_mwi = 0
        self.rising = False
        self.peak_val = 0
        self.peak_n = 0
        self.spki = 0
        self.npki = 0
        self.thr = 0
        self.learn_max = 0
        self.last_qrs_n = -10000  # sample (detector time) of the last QRS's integration peak
        self.last_r_k = -1  # sample index (stream time) of the last R peak, -1: none yet
        self.last_slope = 0
        self.rr_n = 0
        self.rr_i = 0
        self.rr_sum = 0
        self.sb_val = 0  # the best noise peak since the last QRS (search-back candidate)
        self.sb_n = 0

    # -- sampling path ---------------------------------------------------------------------------
    def skip(self, missed):
        """Samples lost by the sampler: time moves on, the filters see nothing."""
        k = self.k + missed
        self.k = k
        if k >= 2 * _REBASE:
            # Leads off for weeks (skip(1) per sample, no update()) must not take k past 2**30.
            self._rebase_k()

    def update(self, x):
        """Feed one sample (microvolts). Beats are queued for take()."""
        k = self.k
        if k >= 2 * _REBASE:
            # k counts every sample and skip since boot (n restarts when the leads come back):
            # each is moved back on its own, before either leaves the small-int range.
            self._rebase_k()
            k = self.k
        self.k = k + 1
        n = self.n
        if n >= 2 * _REBASE:
            self._rebase_n()
            n = self.n
        self.n = n + 1
        # Low-pass: moving sum of 5.
        i = self.lp_i
        lp = self.lp_sum + x - self.lp_buf[i]
        self.lp_sum = lp
        self.lp_buf[i] = x
        self.lp_i = i + 1 if i + 1 < _LP_N else 0
        # High-pass: the sample 16 back minus the 33-sample mean.
        i = self.hp_i
        old = self.hp_buf[i]
        self.hp_sum += lp - old
        self.hp_buf[i] = lp
        self.hp_i = i + 1 if i + 1 < _HP_N else 0
        j = self.hp_i + _HP_DELAY
        if j >= _HP_N:
            j -= _HP_N
        y = self.hp_buf[j] - self.hp_sum // _HP_N
        # Five-point derivative, scaled, clamped, squared.
        d = (2 * y + self.d1 - self.d3 - 2 * self.d4) >> 3
        self.d4 = self.d3
        self.d3 = self.d2
        self.d2 = self.d1
        self.d1 = y
        if d < 0:
            d = -d
        if d > _SLOPE_MAX:
            d = _SLOPE_MAX
        h = n & _HMASK
        self.bp[h] = y
        self.slope[h] = d
        sq = d * d
        # Moving window integration.
        i = self.mwi_i
        m = self.mwi_sum + sq - self.mwi_buf[i]
        self.mwi_sum = m
        self.mwi_buf[i] = sq
        self.mwi_i = i + 1 if i + 1 < _MWI_N else 0
        if n < _LEARN:
            if m > self.learn_max:
                self.learn_max = m
            if n == _LEARN - 1:
                self.spki = self.learn_max // 3
                self.npki = self.learn_max // 16
                self.thr = self.npki + ((self.spki - self.npki) >> 2)
            self.prev_mwi = m
            return
        # Peaks of the integrated signal: rising, then falling to half the top.
        if m > self.prev_mwi:
            if not self.rising or m > self.peak_val:
                if not self.rising:
                    self.rising = True
                    self.peak_val = m
                    self.peak_n = n
                elif m > self.peak_val:
                    self.peak_val = m
                    self.peak_n = n
        elif self.rising and m < (self.peak_val >> 1):
            self.rising = False
            self._peak(self.peak_val, self.peak_n)
        self.prev_mwi = m
        # Search-back: no QRS for 1.66 mean RR: take the best peak over half the threshold.
        if self.rr_n >= 2 and self.sb_val > 0:
            mean_rr = self.rr_sum // (self.rr_n if self.rr_n < _RR_N else _RR_N)
            if n - self.last_qrs_n > (mean_rr * 166) // 100 and self.sb_val > (self.thr >> 1):
                self.spki += (self.sb_val - self.spki) >> 2
                self.thr = self.npki + ((self.spki - self.npki) >> 2)
                self._qrs(self.sb_n)
                self.sb_val = 0

    def _rebase_n(self):
        """Detector time (n and what is measured in it) back by _REBASE."""
        self.n -= _REBASE
        self.peak_n -= _REBASE
        self.sb_n -= _REBASE
        self.last_qrs_n -= _REBASE

    def _rebase_k(self):
        """Stream time (k and the last R peak) back by _REBASE (beat_k is written, never read)."""
        while self.k >= 2 * _REBASE:  # a long skip() may have moved it on by more than once
            self.k -= _REBASE
            if self.last_r_k >= 0:
                self.last_r_k -= _REBASE
                if self.last_r_k < 0:
                    self.last_r_k = -1

    def _peak(self, val, pn):
        since = pn - self.last_qrs_n
        if since < _REFRACTORY:
            return
        if val > self.thr:
            slope = self._max_slope(pn)
            if since < _TWAVE and slope < (self.last_slope >> 1):
                self._noise(val)  # a T wave: its slope is less than half the QRS's
                return
            self.last_slope = slope
            self.spki += (val - self.spki) >> 3
            self.thr = self.npki + ((self.spki - self.npki) >> 2)
            self._qrs(pn)
            self.sb_val = 0
        else:
            self._noise(val)
            if val > self.sb_val:
                self.sb_val = val
                self.sb_n = pn

    def _noise(self, val):
        self.npki += (val - self.npki) >> 3
        self.thr = self.npki + ((self.spki - self.npki) >> 2)

    def _max_slope(self, pn):
        best = 0
        i = pn - _MWI_N
        while i <= pn:
            s = self.slope[i & _HMASK]
            if s > best:
                best = s
            i += 1
        return best

    def _qrs(self, pn):
        """A QRS whose integration peak was at detector sample pn: place R, queue the beat."""
        self.last_qrs_n = pn
        # R: the largest band-passed deflection in the integration window before the peak.
        best = -1
        at = pn - (_MWI_N >> 1)  # if the window has left the history: about where R was
        i = pn - _MWI_N - 4
        if i < self.n - _HIST + 1:
            i = self.n - _HIST + 1
        while i <= pn:
            v = self.bp[i & _HMASK]
            if v < 0:
                v = -v
            if v > best:
                best = v
                at = i
            i += 1
        r_k = self.k - 1 - (self.n - 1 - at) - _DELAY
        rr = 0
        if self.last_r_k >= 0:
            rr = r_k - self.last_r_k
            if rr <= 0:
                return
            j = self.rr_i
            self.rr_sum += rr - self.rr[j]
            self.rr[j] = rr
            self.rr_i = j + 1 if j + 1 < _RR_N else 0
            if self.rr_n < _RR_N:
                self.rr_n += 1
        self.last_r_k = r_k
        self.beats_total += 1
        w = self.beats_w
        nxt = w + 1 if w + 1 < _BEATS_N else 0
        if nxt == self.beats_r:
            return  # nobody took the beats for 16 of them: keep the oldest
        self.beat_k[w] = r_k
        self.beat_rr[w] = rr
        self.beats_w = nxt

    # -- reporting (task side) --------------------------------------------------------------------
    def take(self, out):
        """Move the queued beats' RR intervals (samples; 0 for a first beat) into list out."""
        while self.beats_r != self.beats_w:
            r = self.beats_r
            out.append(self.beat_rr[r])
            self.beats_r = r + 1 if r + 1 < _BEATS_N else 0
        return out

    def hr_bpm(self):
        """Heart rate from the last (up to) 4 RR intervals, as a bedside monitor shows it.

        0 when the rate is unknown (learning, or no beat in 8 s). During a pause longer than
        1.5 mean RR the rate falls with the time since the last beat.
        """
        if self.n < _LEARN or self.last_r_k < 0 or self.rr_n == 0:
            return 0
        since = self.k - 1 - self.last_r_k
        if since > _HR_WINDOW:
            return 0
        count = self.rr_n if self.rr_n < 4 else 4
        total = 0
        j = self.rr_i
        for _ in range(count):
            j = j - 1 if j > 0 else _RR_N - 1
            total += self.rr[j]
        mean = total // count
        if since > (3 * mean) // 2 + _LATENCY:
            mean = since - _LATENCY
        return (60 * _FS + mean // 2) // mean


def _zero(a):
    for i in range(len(a)):
        a[i] = 0


def rr_1024(rr_samples):
    """RR interval in samples at 250 Hz -> units of 1/1024 s (HRS 0x2A37), rounded."""
    return (rr_samples * 1024 + _FS // 2) // _FS
