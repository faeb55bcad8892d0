"""Second-order-section filtering without scipy's per-call overhead (the same arithmetic).

`scipy.signal.sosfilt` spends ~70 µs per call validating and reshaping before its C kernel runs
for a few µs; ingest calls it thousands of times a second (one stream per patient). These
functions call the same kernel (`scipy.signal._sosfilt._sosfilt`, a private module: if a scipy
release moves it, the public functions are used instead), so outputs are bit-identical to
`sosfilt` and `sosfiltfilt(padtype="odd")`. Inputs must be float64; filtering is along the last axis.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy.signal import sosfilt, sosfilt_zi

try:  # the C kernel behind sosfilt
    from scipy.signal._sosfilt import _sosfilt as _kernel
except ImportError:  # pragma: no cover - depends on the scipy release
    _kernel = None

__all__ = ["sosfilt_state", "sosfiltfilt_odd"]

_Arr = npt.NDArray[np.float64]


def sosfilt_state(sos: _Arr, x: _Arr, zi: _Arr) -> tuple[_Arr, _Arr]:
    """`sosfilt(sos, x, zi=zi)` for 1-D `x` (zi shape (sections, 2)) or 2-D `x` (rows are signals,
    zi shape (sections, rows, 2), as scipy's). Returns (y, new zi); the inputs are not modified."""
    if _kernel is None:  # pragma: no cover
        y, z = sosfilt(sos, x, zi=zi)
        return np.asarray(y), np.asarray(z)
    if x.ndim == 1:
        y = np.array(x[None, :], dtype=np.float64, order="C")
        z = np.array(zi[None, :, :], dtype=np.float64, order="C")
        _kernel(sos, y, z)
        return y[0], z[0]
    y = np.array(x, dtype=np.float64, order="C")
    z = np.ascontiguousarray(np.moveaxis(zi, 0, 1), dtype=np.float64)  # (rows, sections, 2)
    _kernel(sos, y, z)
    return y, np.moveaxis(z, 1, 0)


@lru_cache(maxsize=32)
def _zi(sos_bytes: bytes, n_sections: int) -> _Arr:
    sos = np.frombuffer(sos_bytes, dtype=np.float64).reshape(n_sections, 6)
    return np.asarray(sosfilt_zi(sos), dtype=np.float64)


def sosfiltfilt_odd(sos: _Arr, x: _Arr, padlen: int) -> _Arr:
    """`sosfiltfilt(sos, x, axis=-1, padtype="odd", padlen=padlen)` for 1-D or 2-D float64 `x`."""
    n = x.shape[-1]
    if padlen >= n:
        raise ValueError("padlen must be shorter than the signal")
    zi = _zi(sos.tobytes(), sos.shape[0])  # (sections, 2)
    if padlen > 0:
        left = 2 * x[..., :1] - x[..., padlen:0:-1]
        right = 2 * x[..., -1:] - x[..., -2 : -(padlen + 2) : -1]
        ext = np.concatenate((left, x, right), axis=-1)
    else:
        ext = x
    if ext.ndim == 1:
        y, _ = sosfilt_state(sos, ext, zi * ext[0])
        y, _ = sosfilt_state(sos, y[::-1], zi * y[-1])
        y = y[::-1]
    else:
        rows = ext.shape[0]
        z0 = zi[:, None, :] * ext[None, :, :1]  # (sections, rows, 2)
        y, _ = sosfilt_state(sos, ext, z0)
        z1 = zi[:, None, :] * y[None, :, -1:]
        y, _ = sosfilt_state(sos, y[:, ::-1], z1)
        y = y[:, ::-1]
        assert y.shape[0] == rows
    return np.asarray(y[..., padlen : n + padlen] if padlen > 0 else y)
