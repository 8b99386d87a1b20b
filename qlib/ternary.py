"""Ternary weights (TWN): -alpha, 0 or +alpha, with a threshold that decides which weights become 0.

Chapter: Binary and ternary networks, mixed precision (chapter 8, lab08_binary_mixed).

Ternary weight networks (Li, Zhang and Liu 2016) store each weight as t in {-1, 0, +1} and one
float32 scale alpha per output channel (axis 0, granularity ``"channel"``, the default) or per
tensor (``"tensor"``):

    Delta = 0.7 * mean(|w|)                          the threshold (float32: float32(0.7) times the mean)
    t     = +1 if w > Delta, -1 if w < -Delta, 0 if |w| <= Delta      (strict: |w| = Delta gives 0)
    alpha = mean of |w| over the weights with |w| > Delta               (0 if there is none)
    w_hat = alpha * t

Where this comes from: for a fixed support I (the weights with t != 0, t = sign(w) there),

    ||w - alpha t||^2 = ||w||^2 - 2 alpha sum_I |w_i| + |I| alpha^2

is smallest at alpha = sum_I |w_i| / |I|, the mean magnitude of the kept weights, and the error is
then ||w||^2 - (sum_I |w_i|)^2 / |I|. So the best support of size k keeps the k largest |w|, and
the best k maximizes S_k^2 / k, with S_k the sum of the k largest magnitudes. TWN replaces that
search by a rule of thumb: for weights uniform on [-a, a] the optimum is Delta = a/3 = (2/3) E|w|,
for normal weights about 0.6 sigma = 0.75 E|w|, so Delta = 0.7 E|w| (estimated by the mean of |w|)
is close to both. :func:`optimal_ternary` does the exact search, by sorting, for comparison.

Only one k per run of equal magnitudes can be cut by a threshold; the best k is always such a
one: over a run of equal magnitudes v starting after k0 weights, S_k^2 / k = a^2/k + 2av + k v^2
with a = S_k0 - k0 v >= 0 is convex in k, so its maximum over the run sits at an end.

Rounding: none; the decisions are the exact comparisons |w| > Delta. Delta, alpha and the means
are float32 (other code agrees to float32 rounding; weights within a rounding error of Delta may
fall on either side).

Storage: 2 bits per weight in the simplest layout, or 8 bits per 5 weights when five ternary
digits are packed into one byte (3^5 = 243 <= 256): 1.6 bits per weight, close to log2(3) =
1.585, the least that a fixed-length code of equally likely ternary digits can use. Plus 32 bits
per scale. :func:`ternary_storage_bits`, :func:`pack_ternary`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qlib._checks import as_float_tensor, check_axis
from qlib._reference import reference
from qlib.binary import SCALE_BITS, _check_shape, channel_mean, channel_view, straight_through, weight_scale_count
from qlib.granularity import TENSOR_OR_CHANNEL, check_granularity

#: TWN's threshold factor: Delta = 0.7 * mean |w|.
TWN_THRESHOLD_FACTOR = 0.7
#: Ternary digits packed into one byte (3**5 = 243 <= 256).
TRITS_PER_BYTE = 5
PACKINGS = ("2bit", "base3")


def _codes_and_scale(w: torch.Tensor, delta: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary codes of ``w`` at threshold ``delta`` and the mean magnitude above it (0 if none)."""
    magnitude = w.abs()
    kept = magnitude > channel_view(delta, w.ndim)
    t = (torch.sign(w) * kept).to(torch.int8)
    if granularity == "channel":
        rows, rows_kept = magnitude.reshape(w.shape[0], -1), kept.reshape(w.shape[0], -1)
        total, count = (rows * rows_kept).sum(dim=1), rows_kept.sum(dim=1)
    else:
        total, count = (magnitude * kept).sum(), kept.sum()
    alpha = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return t, alpha


@reference
def ternarize(w, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TWN ternary codes, scales and thresholds of ``w``: ``(t, alpha, delta)``, ``w_hat = alpha * t``.

        delta = 0.7 * mean |w|                         per output channel (axis 0) or per tensor
        t     = sign(w) where |w| > delta, else 0     int8 of w's shape (|w| = delta gives 0)
        alpha = mean of |w| where |w| > delta         0 for a channel with no such weight

    ``granularity``: ``"channel"`` computes delta and alpha for each output channel ``w[c]``
    (axis 0; float32 of shape ``[w.shape[0]]``), ``"tensor"`` once for the whole weight (0-d).
    Raises ``ValueError`` for NaN, infinity, an empty tensor, a granularity other than "tensor"
    or "channel", or "channel" on a 0-d tensor.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "ternarize")
    w = as_float_tensor(w, "w").to(torch.float32)
    delta = TWN_THRESHOLD_FACTOR * channel_mean(w.abs(), granularity)
    t, alpha = _codes_and_scale(w, delta, granularity)
    return t, alpha, delta


def fake_ternarize(w, granularity: str = "channel") -> torch.Tensor:
    """The float32 values ``alpha * t`` that TWN's ternary weights stand for (see :func:`ternarize`)."""
    check_granularity(granularity, TENSOR_OR_CHANNEL, "fake_ternarize")
    t, alpha, _ = ternarize.unguarded(w, granularity)
    return channel_view(alpha, t.ndim) * t.to(torch.float32)


def ternarize_ste(w: torch.Tensor, granularity: str = "channel") -> torch.Tensor:
    """``alpha * t`` forward; gradient passed straight through to ``w`` (alpha and delta held constant)."""
    check_granularity(granularity, TENSOR_OR_CHANNEL, "ternarize_ste")
    return straight_through(w, fake_ternarize(w.detach(), granularity))


def _best_threshold(magnitudes: np.ndarray) -> float:
    """The threshold whose ternary approximation of one slice has the least squared error (float64 search)."""
    m = np.sort(magnitudes.astype(np.float64))[::-1]
    n = m.size
    k = np.arange(1, n + 1)
    gain = np.cumsum(m) ** 2 / k                      # ||w||^2 - error of the best support of size k
    cuttable = np.append(m[:-1] > m[1:], True)        # a threshold can separate the k largest from the rest
    gain[~cuttable] = -np.inf
    best = int(np.argmax(gain))                       # the first maximum: the fewest nonzero weights
    return float(m[best + 1]) if best + 1 < n else 0.0


def optimal_ternary(w, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ternary approximation ``alpha * t`` of least squared error: ``(t, alpha, delta)`` as in :func:`ternarize`.

    Per slice (each output channel for ``"channel"``, the whole weight for ``"tensor"``), ``delta``
    is the largest magnitude left out of the best support (0 if every weight is kept), so
    ``|w| > delta`` keeps the k largest |w| for the k that
    maximizes S_k^2 / k (see the module docstring); ``alpha`` is the mean of the kept magnitudes.
    Among equally good supports the smallest is chosen. Sorting: O(n log n).
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "optimal_ternary")
    w = as_float_tensor(w, "w").to(torch.float32)
    by_channel = granularity == "channel"
    if by_channel:
        check_axis(w, 0)  # a 0-d tensor has no channels
    rows = w.reshape(w.shape[0], -1) if by_channel else w.reshape(1, -1)
    deltas = [_best_threshold(r.abs().numpy()) for r in rows]
    delta = torch.tensor(deltas, dtype=torch.float32)
    delta = delta if by_channel else delta.reshape(())
    t, alpha = _codes_and_scale(w, delta, granularity)
    return t, alpha, delta


def ternary_storage_bits(shape, granularity: str = "channel", packing: str = "2bit") -> int:
    """Bits to store a ternary weight of ``shape``: the codes plus 32 per scale (``shape[0]`` scales
    for granularity ``"channel"``, one for ``"tensor"``).

        packing="2bit":   2 * numel                  (one 2-bit field per weight, one code unused)
        packing="base3":  8 * ceil(numel / 5)        (five ternary digits per byte, see pack_ternary)

    The thresholds are not stored: inference needs only t and alpha.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "ternary_storage_bits")
    shape = _check_shape(shape)
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    n = math.prod(shape)
    codes = 2 * n if packing == "2bit" else 8 * math.ceil(n / TRITS_PER_BYTE)
    return codes + SCALE_BITS * weight_scale_count(shape, granularity)


def _check_codes(t) -> np.ndarray:
    t = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t)
    if t.size == 0 or not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"ternary codes must be a non-empty integer array, got dtype {t.dtype} and size {t.size}")
    if t.min() < -1 or t.max() > 1:
        raise ValueError(f"ternary codes lie in {{-1, 0, 1}}, got values from {t.min()} to {t.max()}")
    return t.reshape(-1).astype(np.int64)


def pack_ternary(t) -> np.ndarray:
    """Pack ternary codes (flat, row-major) five to a byte: ``byte = sum_j (t_j + 1) * 3**j``, j = 0..4.

    The digit t_j + 1 is in {0, 1, 2}; the last byte is padded with t = -1 (digit 0). Returns
    ``ceil(n / 5)`` uint8 values. Example: t = [1, 0, -1, 1, 1] gives 2 + 1*3 + 0*9 + 2*27 + 2*81 = 221.
    """
    digits = _check_codes(t) + 1
    digits = np.concatenate([digits, np.zeros(-digits.size % TRITS_PER_BYTE, dtype=np.int64)])
    powers = 3 ** np.arange(TRITS_PER_BYTE)
    return (digits.reshape(-1, TRITS_PER_BYTE) @ powers).astype(np.uint8)


def unpack_ternary(packed, n: int) -> np.ndarray:
    """The first ``n`` ternary codes (int8) that :func:`pack_ternary` stored in ``packed``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(f"packed must be a 1-D uint8 array, got dtype {packed.dtype} and shape {packed.shape}")
    if int(packed.max(initial=0)) >= 3**TRITS_PER_BYTE:
        raise ValueError(f"a byte of five ternary digits is at most 242, got {int(packed.max())}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= TRITS_PER_BYTE * packed.size:
        raise ValueError(f"n must be between 1 and {TRITS_PER_BYTE * packed.size} for {packed.size} bytes, got {n!r}")
    digits = (packed.astype(np.int64)[:, None] // 3 ** np.arange(TRITS_PER_BYTE)) % 3
    return (digits.reshape(-1)[:n] - 1).astype(np.int8)
