"""The QR encoder's mask choice (ISO 18004's penalty rule, as the ``qrcode`` package computes it), in numpy.

``qrcode`` scores each of the eight mask patterns by building the whole matrix in Python and walking
it module by module (``util.lost_point``): about 2 ms a code, most of a QR code's rendering time.
While the mask is chosen, the format and version modules are blank whatever the mask, so the eight
candidates differ only in the data modules: the data bits, placed once in ``map_data``'s order and
masked eight ways, give all eight, and the same penalty sums give the same choice (the lowest
penalty, the first on a tie).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import qrcode
from qrcode import util

#: ISO 18004's finder-like pattern 1:1:3:1:1 with four light modules after it, and reversed, as
#: 11-bit numbers (first module the highest bit).
_FINDER_LIKE = (0b10111010000, 0b00001011101)


@lru_cache(maxsize=None)
def _mask_patterns(n: int) -> np.ndarray:
    """The eight mask patterns on an ``n`` x ``n`` matrix (row ``i``, column ``j``), as ``qrcode.util.mask_func``."""
    i, j = np.indices((n, n))
    return np.stack([
        (i + j) % 2 == 0,
        i % 2 == 0,
        j % 3 == 0,
        (i + j) % 3 == 0,
        (i // 2 + j // 3) % 2 == 0,
        (i * j) % 2 + (i * j) % 3 == 0,
        ((i * j) % 2 + (i * j) % 3) % 2 == 0,
        ((i * j) % 3 + (i + j) % 2) % 2 == 0,
    ])


def lost_points(matrices: np.ndarray) -> list[int]:
    """The penalty of each boolean matrix (dark = True) of a ``(k, n, n)`` stack:
    ``qrcode.util.lost_point``'s four rules, summed the same way."""
    k, n, _ = matrices.shape
    lines = np.concatenate([matrices, matrices.transpose(0, 2, 1)], axis=1)
    starts = np.ones(lines.shape, dtype=bool)
    starts[..., 1:] = lines[..., 1:] != lines[..., :-1]
    first = np.flatnonzero(starts)
    lengths = np.diff(np.append(first, lines.size))
    long = lengths >= 5
    runs = np.bincount(first[long] // lines[0].size, weights=lengths[long] - 2, minlength=k)
    corner = matrices[:, :-1, :-1]
    blocks = ((corner == matrices[:, :-1, 1:]) & (corner == matrices[:, 1:, :-1]) & (corner == matrices[:, 1:, 1:])).sum(axis=(1, 2))
    finder_like = _windows_of_11(lines, _FINDER_LIKE).sum(axis=(1, 2))
    dark = matrices.sum(axis=(1, 2))
    return [
        int(round(r)) + 3 * int(b) + 40 * int(f) + int(abs(float(int(d)) / (n**2) * 100 - 50) / 5) * 10
        for r, b, f, d in zip(runs, blocks, finder_like, dark)
    ]


def _windows_of_11(lines: np.ndarray, codes: tuple[int, ...]) -> np.ndarray:
    """Where each run of 11 modules along the last axis, read as an 11-bit number (first module
    the highest bit), is one of ``codes``: shifted in one module at a time, a sixth of the time
    of a matrix product over a sliding window and ``np.isin``."""
    m = lines.shape[-1] - 10
    window = lines[..., :m].astype(np.int16)
    for b in range(1, 11):
        window <<= 1
        window |= lines[..., b:b + m]
    return np.logical_or.reduce([window == code for code in codes])


@lru_cache(maxsize=None)
def _layout(version: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A code of ``version`` while its mask is chosen: the matrix with every function pattern drawn
    (format and version modules blank), where the data modules are, and their flat indices in the
    order ``map_data`` fills them (two-module columns, right to left, zigzagging up and down)."""
    n = version * 4 + 17
    code = qrcode.QRCode(version=version)
    code.modules_count = n
    code.modules = [[None] * n for _ in range(n)]
    code.setup_position_probe_pattern(0, 0)
    code.setup_position_probe_pattern(n - 7, 0)
    code.setup_position_probe_pattern(0, n - 7)
    code.setup_position_adjust_pattern()
    code.setup_timing_pattern()
    code.setup_type_info(True, 0)
    if version >= 7:
        code.setup_type_number(True)
    data = np.array([[module is None for module in row] for row in code.modules])
    blank = np.array([[bool(module) for module in row] for row in code.modules])
    order, row, step = [], n - 1, -1
    for col in range(n - 1, 0, -2):
        col -= col <= 6
        while 0 <= row < n:
            order += [row * n + c for c in (col, col - 1) if data[row, c]]
            row += step
        row, step = row - step, -step
    return blank, data, np.array(order)


def best_mask_pattern(qr: qrcode.QRCode) -> int:
    """The mask pattern ``qr.best_mask_pattern()`` returns, for a code whose version is set."""
    if qr.data_cache is None:
        qr.data_cache = util.create_data(qr.version, qr.error_correction, qr.data_list)
    blank, data, order = _layout(qr.version)
    bits = np.unpackbits(np.array(qr.data_cache, dtype=np.uint8))[: len(order)]
    unmasked = blank.copy().ravel()
    unmasked[order[: len(bits)]] = bits.astype(bool)
    candidates = np.where(data, unmasked.reshape(blank.shape) ^ _mask_patterns(blank.shape[0]), blank)
    return int(np.argmin(lost_points(candidates)))
