"""Zero-phase filtering of many windows at once (the PPG analysis filters every patient's window
in one call; the loop is compiled, `_kernels.sosfiltfilt_rows_k`)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy.signal import sosfilt_zi

from ._kernels import sosfiltfilt_rows_k

__all__ = ["sosfiltfilt_odd"]

_Arr = npt.NDArray[np.float64]


@lru_cache(maxsize=32)
def _zi(sos_bytes: bytes, n_sections: int) -> _Arr:
    sos = np.frombuffer(sos_bytes, dtype=np.float64).reshape(n_sections, 6)
    return np.asarray(sosfilt_zi(sos), dtype=np.float64)


def sosfiltfilt_odd(sos: _Arr, x: _Arr, padlen: int, offset: _Arr | None = None) -> _Arr:
    """`sosfiltfilt(sos, x - offset, axis=-1, padtype="odd", padlen=padlen)` for 1-D or 2-D float64
    `x`; `offset`, one value per row (default none), is subtracted from each row as it is read."""
    n = x.shape[-1]
    if padlen >= n:
        raise ValueError("padlen must be shorter than the signal")
    sos = np.ascontiguousarray(sos, dtype=np.float64)
    rows = np.ascontiguousarray(x.reshape(-1, n), dtype=np.float64)
    off = (
        np.zeros(rows.shape[0]) if offset is None else np.ascontiguousarray(offset, dtype=np.float64).ravel()
    )
    if off.shape != (rows.shape[0],):
        raise ValueError("offset must have one value per row")
    y = sosfiltfilt_rows_k(sos, rows, _zi(sos.tobytes(), sos.shape[0]), int(padlen), off)
    return y.reshape(x.shape)
