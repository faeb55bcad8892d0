"""A small reader for MIT-BIH Arrhythmia Database records (WFDB header, format 212, .atr).

Used by the detector tests and benchmarks; the ingest runtime never reads files. Only the subset of
the WFDB formats that the MIT-BIH Arrhythmia Database uses is implemented, and anything else is
refused with `MitdbError` rather than guessed at.

File formats (PhysioNet WFDB documentation, "header(5)", "signal(5)" and "annot(5)" man pages,
https://physionet.org/physiotools/wag/):

Header ``<record>.hea`` (text; lines starting with ``#`` are comments, blank lines are ignored)
    Record line: ``name n_signals fs[/counterfreq][(base)] n_samples ...``.
    One signal line per signal: ``file format[xskew][:skew][+offset] gain[(baseline)][/units]
    adc_resolution adc_zero initial_value checksum block_size description``. ``gain`` is ADC units
    per physical unit (per mV for the MIT-BIH records); ``baseline`` defaults to ``adc_zero``.
    ``checksum`` is the 16-bit two's-complement sum of all samples of the signal.

Signal file, format 212
    Samples of all signals are interleaved frame by frame. Each pair of consecutive 12-bit
    two's-complement samples occupies three bytes: the first sample is byte 0 plus the low nibble
    of byte 1 (as bits 8-11); the second is byte 2 plus the high nibble of byte 1.

Annotation file ``.atr`` (MIT format)
    A sequence of little-endian 16-bit words: the top 6 bits are the annotation code ``A``, the low
    10 bits the time ``I`` since the previous annotation (in samples). ``A = 59`` (SKIP): the next
    two words hold a 32-bit interval, high word first. ``A = 60, 61, 62`` (NUM, SUB, CHAN): ``I`` is
    an attribute of the current annotation. ``A = 63`` (AUX): ``I`` bytes of text follow, padded
    to an even length. ``A = 0, I = 0`` ends the file.

Source of the data: Moody GB, Mark RG. The impact of the MIT-BIH Arrhythmia Database. IEEE Eng in
Med and Biol 20(3):45-50 (2001); Goldberger AL et al. PhysioBank, PhysioToolkit, and PhysioNet.
Circulation 101(23):e215-e220 (2000). Open Data Commons Attribution License v1.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

__all__ = [
    "MitdbError",
    "Signal",
    "Record",
    "Annotations",
    "BEAT_SYMBOLS",
    "read_record",
    "read_annotations",
    "to_microvolts",
]

# Annotation codes of the MIT format (WFDB <wfdb/ecgcodes.h>) mapped to their mnemonic symbols.
_CODE_SYMBOLS: dict[int, str] = {
    1: "N", 2: "L", 3: "R", 4: "a", 5: "V", 6: "F", 7: "J", 8: "A", 9: "S", 10: "E", 11: "j",
    12: "/", 13: "Q", 14: "~", 16: "|", 18: "s", 19: "T", 20: "*", 21: "D", 22: '"', 23: "=",
    24: "p", 25: "B", 26: "^", 27: "t", 28: "+", 29: "u", 30: "?", 31: "!", 32: "[", 33: "]",
    34: "e", 35: "n", 36: "@", 37: "x", 38: "f", 39: "(", 40: ")", 41: "r",
}  # fmt: skip
_SKIP, _NUM, _SUB, _CHAN, _AUX = 59, 60, 61, 62, 63

#: Annotation symbols that ANSI/AAMI EC57 counts as beats.
BEAT_SYMBOLS: frozenset[str] = frozenset("NLRBAaJSVrFejnE/fQ?")


class MitdbError(ValueError):
    """The files are not a record this reader understands (or are damaged)."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal of a record: raw ADC samples and how to turn them into physical units."""

    name: str
    adc: npt.NDArray[np.int16]
    gain: float  # ADC units per mV
    baseline: int  # ADC value of 0 mV


@dataclass(frozen=True, slots=True)
class Record:
    """A WFDB record: its sampling rate and signals."""

    name: str
    sampling_rate: float
    signals: tuple[Signal, ...]

    def signal(self, name: str) -> Signal:
        """Return the signal called `name` (e.g. ``"MLII"``)."""
        for sig in self.signals:
            if sig.name == name:
                return sig
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Annotations:
    """Annotations of a record: sample index, symbol, and auxiliary text of each."""

    samples: npt.NDArray[np.int64]
    symbols: tuple[str, ...]
    aux: tuple[str, ...]

    def beats(self) -> npt.NDArray[np.int64]:
        """Sample indices of the annotations that EC57 counts as beats."""
        keep = np.fromiter((s in BEAT_SYMBOLS for s in self.symbols), dtype=bool, count=len(self.symbols))
        return np.asarray(self.samples[keep], dtype=np.int64)


def _header_lines(path: Path) -> list[str]:
    lines = [ln.strip() for ln in path.read_text(encoding="ascii").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def read_record(path: str | Path) -> Record:
    """Read a format-212 WFDB record.

    Parameters
    ----------
    path : str or Path
        Record path without extension (``.../mitdb/100``); ``100.hea`` and its ``.dat`` are read.

    Returns
    -------
    Record
        Raw ADC samples of every signal. Checksums and initial values from the header are verified.

    Raises
    ------
    MitdbError
        Unsupported format, truncated file, or a checksum that does not match.
    """
    base = Path(path)
    lines = _header_lines(base.with_suffix(".hea"))
    if not lines:
        raise MitdbError(f"{base}.hea: empty header")
    head = lines[0].split()
    if len(head) < 4:
        raise MitdbError(f"{base}.hea: record line needs name, signals, rate and length")
    n_sig, n_samp = int(head[1]), int(head[3])
    fs = float(head[2].split("/")[0].split("(")[0])
    if len(lines) < 1 + n_sig:
        raise MitdbError(f"{base}.hea: {n_sig} signals declared, {len(lines) - 1} lines found")
    specs = [ln.split() for ln in lines[1 : 1 + n_sig]]
    files = {s[0] for s in specs}
    if len(files) != 1 or any(s[1] != "212" for s in specs):
        raise MitdbError(f"{base}.hea: only one format-212 signal file is supported")
    raw = np.fromfile(base.parent / specs[0][0], dtype=np.uint8)
    n_values = n_sig * n_samp
    need = (n_values * 3 + 1) // 2
    if raw.size < need:
        raise MitdbError(f"{specs[0][0]}: {raw.size} bytes, {need} needed")
    triples = raw[: (n_values + 1) // 2 * 3].astype(np.int32).reshape(-1, 3)
    first = triples[:, 0] | ((triples[:, 1] & 0x0F) << 8)
    second = triples[:, 2] | ((triples[:, 1] & 0xF0) << 4)
    values = np.empty(triples.shape[0] * 2, dtype=np.int32)
    values[0::2], values[1::2] = first, second
    values = values[:n_values]
    values[values > 2047] -= 4096  # 12-bit two's complement
    frames = values.reshape(n_samp, n_sig)
    signals = []
    for i, spec in enumerate(specs):
        gain_field = spec[2].split("/")[0]
        gain = float(gain_field.split("(")[0]) or 200.0  # WFDB: a gain of 0 means the default 200
        adc_zero = int(spec[4]) if len(spec) > 4 else 0
        baseline = int(gain_field.split("(")[1].rstrip(")")) if "(" in gain_field else adc_zero
        adc = frames[:, i].astype(np.int16)
        if len(spec) > 5 and n_samp and int(spec[5]) != int(adc[0]):
            raise MitdbError(f"{base}: signal {i} initial value {adc[0]} != header {spec[5]}")
        if len(spec) > 6:
            total = int(adc.astype(np.int64).sum())
            checksum = (total + 0x8000) % 0x10000 - 0x8000
            if checksum != int(spec[6]):
                raise MitdbError(f"{base}: signal {i} checksum {checksum} != header {spec[6]}")
        name = " ".join(spec[8:]) if len(spec) > 8 else f"sig{i}"
        signals.append(Signal(name=name, adc=adc, gain=gain, baseline=baseline))
    return Record(name=head[0], sampling_rate=fs, signals=tuple(signals))


def read_annotations(path: str | Path, extension: str = "atr") -> Annotations:
    """Read an MIT-format annotation file.

    Parameters
    ----------
    path : str or Path
        Record path without extension; ``<path>.<extension>`` is read.
    extension : str
        Annotator name, ``"atr"`` for the reference annotations.

    Returns
    -------
    Annotations
        Sample index (at the record's sampling rate), symbol and aux text of each annotation.
    """
    data = Path(f"{path}.{extension}").read_bytes()
    if len(data) % 2:
        data = data[:-1]
    words = np.frombuffer(data, dtype="<u2")
    samples: list[int] = []
    symbols: list[str] = []
    aux: list[str] = []
    t = 0
    i = 0
    while i < len(words):
        word = int(words[i])
        code, interval = word >> 10, word & 0x3FF
        i += 1
        if code == 0 and interval == 0:
            break
        if code == _SKIP:
            if i + 2 > len(words):
                raise MitdbError("truncated SKIP")
            high, low = int(words[i]), int(words[i + 1])
            skip = (high << 16) | low
            t += skip - (1 << 32) if skip & 0x80000000 else skip
            i += 2
        elif code == _AUX:
            n_words = (interval + 1) // 2
            text = bytes(words[i : i + n_words].tobytes())[:interval]
            if aux:
                aux[-1] = text.rstrip(b"\x00").decode("latin-1")
            i += n_words
        elif code in (_NUM, _SUB, _CHAN):
            pass  # attributes of the current annotation that the scoring does not use
        else:
            t += interval
            samples.append(t)
            symbols.append(_CODE_SYMBOLS.get(code, f"<{code}>"))
            aux.append("")
    return Annotations(samples=np.asarray(samples, dtype=np.int64), symbols=tuple(symbols), aux=tuple(aux))


def to_microvolts(
    signal: Signal, sampling_rate: float, target_rate: int | None = None
) -> npt.NDArray[np.float64]:
    """Convert a signal to microvolts, optionally resampled to `target_rate`.

    Parameters
    ----------
    signal : Signal
        Raw ADC signal with its gain (ADC units per mV) and baseline.
    sampling_rate : float
        Sampling rate of `signal` in Hz (360 for the MIT-BIH records).
    target_rate : int, optional
        Resample to this rate with a polyphase FIR (`scipy.signal.resample_poly`), e.g. 250 to
        match the wearables. Both rates must be whole numbers of Hz.

    Returns
    -------
    ndarray of float64
        The signal in µV (not rounded; round it to mimic the wearables' integer µV).
    """
    uv = (signal.adc.astype(np.float64) - signal.baseline) * (1000.0 / signal.gain)
    if target_rate is None or target_rate == sampling_rate:
        return uv
    if float(sampling_rate) != int(sampling_rate):
        raise MitdbError("resampling needs a whole-number source rate")
    g = np.gcd(int(sampling_rate), int(target_rate))
    return np.asarray(resample_poly(uv, int(target_rate) // g, int(sampling_rate) // g), dtype=np.float64)
