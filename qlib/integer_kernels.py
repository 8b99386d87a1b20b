"""Fast exact kernels behind :mod:`qlib.integer_layers`: the same integers, in fewer and cheaper passes.

Chapter 6: Integer-only inference (lab06_integer_inference).

:mod:`qlib.integer_layers` is the reference the chapter cites: a layer there reads as its
formula (accumulate, add the bias, rescale, add the output zero point, clamp) on int64
tensors. PyTorch has no integer BLAS, and every elementwise step is one more pass over memory,
so for 8-bit operands those functions hand the work to this module (one dispatch line each).
It returns the same integers, bit for bit (``tests/test_integer_kernels.py`` holds the two
equal on random shapes and on the extremes), by these tricks, each proved where it is used:

1. :func:`exact_matmul`: an exact integer GEMM from ``torch._int_mm`` (int8 x int8 -> int32)
   or from float64 BLAS while every partial sum stays below 2^53;
2. :func:`as_signed_bytes`: uint8 activations become int8 by moving values and zero point
   down by 128, which changes no ``q_X - Z_X``;
3. :class:`Requantizer`: the output clamp moved before the rescaling, onto the int32
   accumulator (:func:`smallest_input_reaching`); gemmlowp's two roundings, the bias and the
   output zero point in one multiply, one addition and one shift in int64; or, with one
   multiplier per tensor where signs matter, the high multiply in float64 (exact) and the
   rounding shift in int32;
4. the layers work block by block of rows (or of images), so that the int64 passes over a
   block run in cache;
5. a convolution pads its int8 input with ``Z_X`` once and copies its im2col patches in the
   layout with the longer contiguous runs, for one GEMM per block of images.

Where float64 tensors appear (the BLAS route of 1, the float64 route of 3), they carry
integers exactly. The integer model's layers (8-bit, one multiplier per channel) use integer
tensors only, as :class:`qlib.integer_model.FloatTensorGuard` checks.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

#: Largest |integer| that float64 holds exactly, with every integer below it.
FLOAT64_EXACT = 2**53
#: ``torch._int_mm`` on CPU (PyTorch 2.13) returns wrong sums when the inner dimension K is 1
#: (every entry, every shape; K = 2 ... 36 measured exact): such products take another route.
INT_MM_MIN_K = 2
#: Inner dimensions below this keep int8 products summed in int32 exact: K * 128 * 128 < 2^31.
INT_MM_MAX_K = 2**17


# --- 8-bit operands ---------------------------------------------------------------------------------

def _fits(lo: int, hi: int, qmin: int, qmax: int) -> bool:
    return qmin <= lo and hi <= qmax


def is_byte_tensor(t) -> bool:
    """True for a non-empty int8 or uint8 tensor (the dtypes that need no range check)."""
    return isinstance(t, torch.Tensor) and t.dtype in (torch.int8, torch.uint8) and t.numel() > 0


def _as_int8(t: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, int]:
    """``t`` (values in [lo, hi]) as int8 and an offset, ``t = t8 + offset``: 0 for int8 values, 128 for uint8 ones."""
    if _fits(lo, hi, -128, 127):
        return (t if t.dtype == torch.int8 else t.to(torch.int8)), 0
    if t.dtype == torch.uint8:
        return (t ^ 0x80).view(torch.int8), 128  # the bits of v XOR 0x80, read as int8, are v - 128
    return (t - 128).to(torch.int8), 128


def int8_or_none(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as int8 if every value fits in [-128, 127], else ``None``."""
    if t.dtype == torch.int8:
        return t
    lo, hi = (int(v) for v in torch.aminmax(t))
    return t.to(torch.int8) if _fits(lo, hi, -128, 127) else None


def as_signed_bytes(q_x: torch.Tensor, z_x: int) -> tuple[torch.Tensor, int] | None:
    """``(q8, z8)``: the input as int8 with ``q8 - z8 = q_x - Z_X`` everywhere, or ``None``.

    Values that fit int8 are only stored as int8 (``z8 = Z_X``). Values in [0, 255] (uint8) move
    down by 128, and so does the zero point: ``(q - 128) - (Z_X - 128) = q - Z_X``. For the
    zero point that needs ``0 <= Z_X <= 255`` (then ``z8`` fits int8 too, as padding needs).
    """
    if q_x.dtype == torch.int8:
        return q_x, z_x
    if q_x.dtype == torch.uint8:                     # every value lies in [0, 255]: no need to look
        return ((q_x ^ 0x80).view(torch.int8), z_x - 128) if 0 <= z_x <= 255 else None
    lo, hi = (int(v) for v in torch.aminmax(q_x))
    if _fits(lo, hi, -128, 127):
        return _as_int8(q_x, lo, hi)[0], z_x
    if _fits(lo, hi, 0, 255) and 0 <= z_x <= 255:
        return _as_int8(q_x, lo, hi)[0], z_x - 128
    return None


# --- exact integer matrix product ---------------------------------------------------------------------

def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm(a, b)`` (int8 (M, K) x int8 (K, N) -> int32) with operands it reads correctly.

    On CPU it returns wrong sums for a ``b`` whose rows overlap in memory (an im2col view of a
    stride-1 window, for instance): ``a`` is made contiguous and ``b`` row- or column-major.
    The caller keeps ``INT_MM_MIN_K <= K < INT_MM_MAX_K``.
    """
    if not (b.is_contiguous() or b.t().is_contiguous()):
        b = b.contiguous()
    return torch._int_mm(a.contiguous(), b)


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """The exact integer product ``a @ b`` as int64 by a fast route, or ``None`` if none is exact.

    ``a`` (M, K) and ``b`` (K, N) hold integers (any integer dtype; transposed views are fine).

    1. both in int8 or in uint8 range and ``2 <= K < 2^17``: ``torch._int_mm`` on int8, which
       accumulates in int32. A uint8 operand is stored as ``a8 = a - 128`` and corrected,
       ``a @ b = a8 @ b8 + 128 colsum(b8) + ...`` (below). The int32 sums cannot overflow:
       ``|sum| <= K * 128 * 128 < 2^31``.
    2. ``K max|a| max|b| <= 2^53``: float64 BLAS. Every partial sum BLAS forms, in any order and
       with or without fused multiply-add, is a sum of some of the products ``a[m,k] b[k,n]``,
       so an integer of magnitude at most ``sum_k |a[m,k]| |b[k,n]| <= 2^53``. Such integers are
       exactly representable in float64, and an IEEE operation whose exact result is
       representable returns it unrounded: no step ever rounds.

    Otherwise ``None`` (the caller multiplies in int64).
    """
    k = a.shape[1]
    if k == 0:
        return torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64)
    a_lo, a_hi = (int(v) for v in torch.aminmax(a))
    b_lo, b_hi = (int(v) for v in torch.aminmax(b))
    bytes_a = _fits(a_lo, a_hi, -128, 127) or _fits(a_lo, a_hi, 0, 255)
    bytes_b = _fits(b_lo, b_hi, -128, 127) or _fits(b_lo, b_hi, 0, 255)
    if bytes_a and bytes_b and INT_MM_MIN_K <= k < INT_MM_MAX_K:
        a8, a_off = _as_int8(a, a_lo, a_hi)
        b8, b_off = _as_int8(b, b_lo, b_hi)
        acc = int_mm(a8, b8).to(torch.int64)
        # (a8 + a_off) @ (b8 + b_off) = a8 @ b8 + a_off colsum(b8) + b_off rowsum(a8) + K a_off b_off
        if a_off:
            acc += a_off * b8.sum(dim=0, dtype=torch.int64)
        if b_off:
            acc += b_off * a8.sum(dim=1, dtype=torch.int64, keepdim=True)
        if a_off and b_off:
            acc += k * a_off * b_off
        return acc
    if k * max(abs(a_lo), abs(a_hi)) * max(abs(b_lo), abs(b_hi)) <= FLOAT64_EXACT:
        return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int64)
    return None


# --- requantization in few passes --------------------------------------------------------------------

def smallest_input_reaching(k: int, m0: int, n: int) -> int | None:
    """The smallest integer ``a`` with ``MBQM(a, m0, n) >= k`` (``m0 > 0``, right shift ``n >= 0``).

    With the :class:`Requantizer`'s form ``MBQM(a) = floor((a m0 + 2^30 + 2^(30+n) - 2^31 [u < 0]) / 2^(31+n))``:

    * ``k >= 1`` needs ``u = a m0 + 2^30 >= 0`` (else the numerator is below ``2^(30+n)``), and then
      ``a m0 >= k 2^(31+n) - 2^(30+n) - 2^30``;
    * ``k <= 0`` holds for every ``u >= 0``, and for ``u < 0`` when
      ``a m0 >= k 2^(31+n) - 2^(30+n) + 2^30``, a bound below the first ``a`` with ``u >= 0``;
    * ``n = 0`` (one rounding): ``a m0 >= k 2^31 - 2^30``.

    so ``a = ceil(bound / m0)``. ``MBQM`` rises by 0 or 1 from one ``a`` to the next (``M < 1``), so
    ``MBQM(a) = k`` there. ``None`` for ``m0 = 0`` (``MBQM`` is 0 everywhere).
    """
    if m0 == 0:
        return None
    if n == 0:
        bound = k * 2**31 - 2**30
    else:
        bound = k * 2 ** (31 + n) - 2 ** (30 + n) + (2**30 if k <= 0 else -(2**30))
    return -(-bound // m0)


def _input_bounds(m0: int, n: int, lo: int, hi: int) -> tuple[int, int] | None:
    """``(a_lo, a_hi)`` within int32 with ``lo <= MBQM(a) <= hi`` exactly on ``[a_lo, a_hi]``, or ``None``.

    ``MBQM`` never decreases, so clamping ``a`` to ``[a_lo, a_hi]`` before rescaling gives
    ``clamp(MBQM(a), lo, hi)``: the int32 clamp replaces the int64 one, and bounds ``|a|``.
    """
    a_lo, above = smallest_input_reaching(lo, m0, n), smallest_input_reaching(hi + 1, m0, n)
    if a_lo is None:
        return None
    a_lo, a_hi = max(a_lo, -(2**31)), min(above - 1, 2**31 - 1)
    return (a_lo, a_hi) if a_lo <= a_hi else None


def channel_input_bounds(m0: np.ndarray, shift: np.ndarray, lo: int, hi: int):
    """:func:`_input_bounds` for one ``(m0, n)`` per channel (int64 arrays), computed at once; or ``None``.

    The same bound and ceiling as :func:`smallest_input_reaching`, in int64: ``None`` where a
    product ``k 2^(31+n)`` could leave int64, for ``m0 = 0``, or where no int32 input reaches
    ``[lo, hi]`` in some channel. (numpy: on a few dozen numbers its operations cost a fraction
    of torch's.)
    """
    if (max(abs(lo), abs(hi) + 1) + 1) * 2 ** (31 + int(shift.max())) >= 2**62 or not m0.all():
        return None

    def smallest(k: int) -> np.ndarray:
        rounding = np.where(shift > 0, (1 << (shift + 30)) + (2**30 if k > 0 else -(2**30)), 2**30)
        return -((rounding - k * (1 << (shift + 31))) // m0)          # ceil((k 2^(31+n) - rounding) / m0)

    a_lo = np.maximum(smallest(lo), -(2**31))
    a_hi = np.minimum(smallest(hi + 1) - 1, 2**31 - 1)
    return None if (a_lo > a_hi).any() else (a_lo, a_hi)


def _tensor(values: np.ndarray, dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A torch tensor of ``values`` in ``dtype`` (which holds them), shaped ``shape``."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=dtype)).reshape(shape)


class Requantizer:
    """``clamp(MBQM(acc + bias) + Z_Y, lo, hi)`` of int32 accumulators, the same integers as gemmlowp.

    ``MBQM`` is :func:`qlib.requantize.multiply_by_quantized_multiplier` with ``m0 >= 0`` and a
    right shift ``n >= 0``: ``z = SRDHM(a, m0)`` then ``RDBPOT(z, n)``. For ``a = acc + bias``:

        u = a m0 + 2^30                               the high multiply before its shift
        z = floor(u / 2^31)                           SRDHM (ties toward +inf; no saturation for m0 >= 0)
        r = floor((z + 2^(n-1) - [z < 0]) / 2^n)      RDBPOT, n >= 1 (ties away from zero)
          = floor((u + 2^(30+n) - 2^31 [u < 0]) / 2^(31+n))
        r + Z_Y = (a m0 + K - 2^31 [a < 0]) >> (31 + n),   K = 2^30 + 2^(30+n) + Z_Y 2^(31+n)

    * the nested floors merge: ``floor((floor(u / c) + j) / d) = floor((u + j c) / (c d))`` for
      integers ``u, j`` and ``c, d > 0``; ``z < 0`` exactly when ``u < 0``;
    * ``[u < 0]`` may be read as ``[a < 0]`` (the sign bit of ``a``, or of the product ``a m0``,
      which is 0 also for ``m0 = 0``): they differ only for ``a < 0 <= u``, i.e. ``0 <= u <= 2^30``,
      where ``z = 0`` and both numerators lie in ``[2^(30+n) - 2^31, 2^(30+n)]``, inside
      ``[0, 2^(31+n))`` for ``n >= 1``: ``r = 0`` either way;
    * for ``n = 0`` there is no second rounding: ``r = floor(u / 2^31)``, ``K = 2^30 + Z_Y 2^31``
      and no sign term;
    * the sign term only matters for negative ``r``: if ``lo >= Z_Y`` (a fused ReLU) every
      negative ``r`` is clamped to ``lo`` anyway, and it is left out; then the bias can join
      ``K`` as ``bias m0`` instead of being added to ``acc``;
    * ``MBQM`` never decreases, so the output clamp can be done first, in int32: ``a`` clamped
      to the inputs whose ``MBQM`` lies in ``[lo - Z_Y, hi - Z_Y]`` (:func:`smallest_input_reaching`,
      :func:`channel_input_bounds`); this also bounds ``|a|``.

    Two routes compute this (the caller guarantees ``|acc| + max|bias| < 2^31``):

    * one rounding in int64 (``fused``): the widening copy of ``a`` into the output, one multiply
      by ``m0``, one addition of ``K`` (and of ``-2^31 [a m0 < 0]`` where signs matter, from the
      sign bit ``(a m0) >> 63``), one arithmetic right shift (floor), the clamp unless done in
      int32. ``|a m0| < 2^62``, so ``K`` holds ``Z_Y 2^(31+n)`` only while the sum stays inside
      int64; otherwise ``Z_Y`` is added after the shift;
    * the two roundings one after the other (``two_roundings``), taken when signs matter, with one
      multiplier, where ``|a| <= A`` after the clamp: ``z + O = floor(a (m0 / 2^31) + 1/2 + O)``
      in float64, exact while ``A m0 + 2^30 + O 2^31 < 2^53`` (every number involved is a multiple
      of ``2^-31`` below ``2^53 2^-31``, and an IEEE operation whose exact result is representable
      returns it); ``O`` is a power of two above ``|z|``, so the argument is positive and
      converting to int32 (truncation) floors it. Then in int32, cheaper than int64:
      ``r + Z_Y = (z + O + (a >> 31) + 2^(n-1) + Z_Y 2^n - O) >> n``, and the widening copy.

    ``requantize(acc, out)``: ``acc`` int32 (overwritten), ``out`` the int64 output block, which
    receives the result: both (rows, C_out), or with ``channels_first`` ``acc`` (C_out, b, P) and
    ``out`` (b, C_out, P). ``bias``, ``m0``, ``shift``: int64, one value or one per output channel.
    ``clamp_first=False`` keeps the clamp in int64 with one multiplier per channel (for small
    layers, where computing the bounds costs more than it saves).
    """

    def __init__(self, bias, m0, shift, z_y: int, lo: int, hi: int, channels_first: bool = False,
                 clamp_first: bool = True):
        self.lo, self.hi, self.z_y, self.channels_first = lo, hi, z_y, channels_first
        acc_shape, out_shape = ((-1, 1, 1), (-1, 1)) if channels_first else ((-1,), (-1,))
        # the constants are a few numbers per channel: numpy int64 (cheaper than torch on so few)
        bias, m0, shift = (np.asarray(v, dtype=np.int64).reshape(-1) for v in (bias, m0, shift))
        n_max = int(shift.max())
        self.sign = n_max > 0 and lo < z_y                         # negative r survive the clamp
        bias = bias if bias.any() else None
        if m0.size == 1 and shift.size == 1:                       # one multiplier: Python numbers
            self.bias = None if bias is None else _tensor(bias, np.int32, acc_shape)
            self._one_multiplier(int(m0[0]), int(shift[0]))
            return
        self.route = "fused"
        bounds = channel_input_bounds(m0, shift, lo - z_y, hi - z_y) if clamp_first else None
        fold_bias = bias is not None and not self.sign             # bias m0 joins K, the bounds move by -bias
        if fold_bias and bounds is not None:
            moved = tuple(v - bias for v in bounds)
            fold_bias = all(-(2**31) <= int(v.min()) and int(v.max()) < 2**31 for v in moved)
            bounds = moved if fold_bias else bounds
        self.bias = None if bias is None or fold_bias else _tensor(bias, np.int32, acc_shape)
        self.bounds = None if bounds is None else tuple(_tensor(v, np.int32, acc_shape) for v in bounds)
        # |a m0 + K - 2^31 [a < 0]| must stay inside int64 for Z_Y 2^(31+n) to join K
        self.z_y_after = 2**62 + 2**31 + 2**30 + 2 ** (30 + n_max) + abs(z_y) * 2 ** (31 + n_max) >= 2**63
        k = (1 << 30) + np.where(shift > 0, 1 << (shift + 30), 0)
        if not self.z_y_after:
            k = k + z_y * (1 << (shift + 31))
        if fold_bias:
            k = k + bias * m0
        self.m0, self.k = (_tensor(v, np.int64, out_shape) for v in np.broadcast_arrays(m0, k))
        self.sign_mask = _tensor(np.where(shift > 0, -(2**31), 0), np.int64, out_shape)   # none where n = 0
        self.total_shift = _tensor(shift + 31, np.int64, out_shape)

    def _one_multiplier(self, m0: int, n: int) -> None:
        lo, hi, z_y = self.lo, self.hi, self.z_y
        self.bounds = _input_bounds(m0, n, lo - z_y, hi - z_y)
        a_max = max(abs(v) for v in self.bounds) if self.bounds else 2**31
        offset = 1 << (a_max * m0 // 2**31 + 2).bit_length()       # O > |z|
        if (self.sign and self.bounds and a_max * m0 + 2**30 + offset * 2**31 < 2**53
                and offset + 2 ** (n - 1) + abs(z_y) * 2**n + a_max < 2**31):
            self.route = "two_roundings"
            self.m0_real = m0 / 2**31                              # exact: m0 < 2^31
            self.first = torch.tensor(0.5 + offset, dtype=torch.float64)
            self.second, self.n = 2 ** (n - 1) + z_y * 2**n - offset, n
            return
        self.route = "fused"
        self.z_y_after = a_max * (2**31 - 1) + 2**31 + 2**30 + 2 ** (30 + n) + abs(z_y) * 2 ** (31 + n) >= 2**63
        self.m0, self.total_shift, self.sign_mask = m0, 31 + n, -(2**31)
        self.k = 2**30 + (2 ** (30 + n) if n else 0) + (0 if self.z_y_after else z_y * 2 ** (31 + n))

    def __call__(self, acc: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            acc.add_(self.bias)                                    # a = acc + bias, int32
        if self.bounds is not None:                                # the output clamp, on int32
            if isinstance(self.bounds[0], torch.Tensor):           # one pair per channel
                torch.maximum(acc, self.bounds[0], out=acc)        # (faster than clamp_ with tensor bounds)
                torch.minimum(acc, self.bounds[1], out=acc)
            else:
                acc.clamp_(*self.bounds)
        if self.route == "two_roundings":
            negative = acc >> 31                                   # -[a < 0]
            real = acc.to(torch.float64)
            torch.add(self.first, real, alpha=self.m0_real, out=real)
            acc = real.to(torch.int32)                             # z + O
            acc.add_(negative).add_(self.second).bitwise_right_shift_(self.n)
            return out.copy_(acc.transpose(0, 1) if self.channels_first else acc)
        out.copy_(acc.transpose(0, 1) if self.channels_first else acc)
        _rescale_in_place(out, self.m0, self.k, self.total_shift, self.sign_mask if self.sign else None)
        if self.z_y_after:
            out.add_(self.z_y)
        if self.bounds is None:
            out.clamp_(self.lo, self.hi)
        return out


def _rescale_in_place(u: torch.Tensor, m0, k, total_shift, sign_mask=None) -> torch.Tensor:
    """``u <- (u m0 + k + (((u m0) >> 63) & sign_mask)) >> total_shift``: the :class:`Requantizer`'s formula.

    ``(u m0) >> 63`` is -1 for a negative product, else 0; ANDed with ``-2^31`` it is the term
    ``-2^31 [a < 0]`` (``sign_mask`` 0 drops it, as for ``n = 0``).
    """
    u.mul_(m0)
    sign = torch.bitwise_right_shift(u, 63).bitwise_and_(sign_mask) if sign_mask is not None else None
    u.add_(k)
    if sign is not None:
        u.add_(sign)
    return u.bitwise_right_shift_(total_shift)


def multiply_by_quantized_multiplier_in_place(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """:func:`qlib.requantize.multiply_by_quantized_multiplier` for ``m0 >= 0`` and right shifts ``n >= 0``, in place.

    The :class:`Requantizer`'s formula without bias, zero point and clamp:

        MBQM(a) = (a m0 + 2^30 + 2^(30+n) - 2^31 [a < 0]) >> (31 + n)     for n >= 1
        MBQM(a) = (a m0 + 2^30) >> 31                                     for n = 0

    ``acc`` (int64 holding int32 values, any shape) is overwritten and returned;
    ``m0``/``shift`` broadcast against it.
    """
    k = (1 << 30) + torch.where(shift > 0, 1 << (shift + 30), 0)
    sign_mask = torch.where(shift > 0, -(2**31), 0)
    if m0.numel() == 1 and shift.numel() == 1:
        return _rescale_in_place(acc, int(m0), int(k), 31 + int(shift), int(sign_mask) or None)
    return _rescale_in_place(acc, m0, k, 31 + shift, sign_mask)


#: Layers with fewer outputs keep the output clamp in int64 (see :class:`Requantizer`).
CLAMP_FIRST_OUTPUTS = 2**16


def _requantizer(q_bias, w8, z_x, m0, shift, z_y, lo, hi, outputs: int,
                 channels_first: bool = False) -> Requantizer | None:
    """The :class:`Requantizer` of an 8-bit layer, or ``None`` where the kernels do not apply.

    ``q_bias``, ``m0``, ``shift``: int64 tensors (checked by the caller). Made by
    :func:`_requantizer_of`, which remembers it by the value of its constants: a model calls its
    layers with the same constants again and again, and computing them is most of a small
    layer's cost. (A :class:`Requantizer` is never changed after it is made, so one object can
    serve every call with equal constants.)
    """
    sums = w8.reshape(w8.shape[0], -1).sum(dim=1, dtype=torch.int32) if z_x else None   # |sum| < 2^24
    constants = (v.to(torch.int64).numpy().tobytes() for v in (q_bias, m0, shift))
    return _requantizer_of(*constants, None if sums is None else sums.numpy().tobytes(), z_x, w8[0].numel(),
                           z_y, lo, hi, channels_first, outputs >= CLAMP_FIRST_OUTPUTS)


@functools.lru_cache(maxsize=64)
def _requantizer_of(q_bias: bytes, m0: bytes, shift: bytes, weight_sums: bytes | None, z_x: int, k: int, z_y: int,
                    lo: int, hi: int, channels_first: bool, clamp_first: bool) -> Requantizer | None:
    """The :class:`Requantizer` of these constants (int64 bytes; the weights' row sums int32), or ``None``.

    The input zero point is folded into the bias, ``q_b - Z_X sum_k q_W[o, k]``; then
    ``|acc| <= K 128 128`` plus the bias must stay inside int32, and every shift must be a right
    shift (``n >= 0``).
    """
    bias, m0, shift = (np.frombuffer(v, dtype=np.int64).copy() for v in (q_bias, m0, shift))
    if (shift < 0).any() or (m0 < 0).any() or not INT_MM_MIN_K <= k < INT_MM_MAX_K:
        return None
    if weight_sums is not None:
        bias = bias - z_x * np.frombuffer(weight_sums, dtype=np.int32).astype(np.int64)
    if k * 128 * 128 + int(np.abs(bias).max()) >= 2**31:
        return None
    return Requantizer(bias, m0, shift, z_y, lo, hi, channels_first, clamp_first)


# --- the layers ---------------------------------------------------------------------------------------

#: Outputs computed per block: the block's int64 results (2 MiB) stay in cache between the passes.
BLOCK = 2**18


def _int8_operands(q_x, q_weight, z_x, z_w):
    """``(x8, z_x, w8)``: the input as int8 with its shifted zero point and the weights as int8,
    when the input is not empty, both fit 8 bits and the weights are symmetric (``z_w == 0``); else ``None``."""
    if q_x.numel() == 0 or bool((z_w != 0).any()):
        return None
    signed = as_signed_bytes(q_x, z_x)
    w8 = int8_or_none(q_weight)
    if signed is None or w8 is None:
        return None
    x8, z_x = signed
    return x8, z_x, w8


def quantized_linear_int8(q_x, q_weight, q_bias, z_x, z_w, m0, shift, z_y, lo, hi) -> torch.Tensor | None:
    """:func:`qlib.integer_layers.quantized_linear` for 8-bit operands and symmetric weights, else ``None``.

    Arguments as checked there: ``q_x`` (N, C_in), ``q_weight`` (C_out, C_in) integer tensors,
    ``q_bias`` int64 (C_out,), ``z_w``, ``m0``, ``shift`` int64 with one value or one per output.
    Block by block of rows: ``acc = int_mm(q_X8, q_W8^T)`` in int32, then the :class:`Requantizer`
    into the output.
    """
    operands = _int8_operands(q_x, q_weight, z_x, z_w)
    if operands is None:
        return None
    x8, z_x, w8 = operands
    requantize = _requantizer(q_bias, w8, z_x, m0, shift, z_y, lo, hi, outputs=x8.shape[0] * w8.shape[0])
    if requantize is None:
        return None
    n, c_out = x8.shape[0], w8.shape[0]
    out = torch.empty(n, c_out, dtype=torch.int64)
    rows = max(1, BLOCK // c_out)
    for start in range(0, n, rows):
        requantize(int_mm(x8[start:start + rows], w8.t()), out[start:start + rows])
    return out


def quantized_conv2d_int8(q_x, q_weight, q_bias, z_x, z_w, m0, shift, z_y, lo, hi, stride, padding,
                          groups) -> torch.Tensor | None:
    """:func:`qlib.integer_layers.quantized_conv2d` for 8-bit operands, symmetric weights, one group; else ``None``.

    The input becomes int8 once (:func:`as_signed_bytes`) and is padded with ``Z_X``. Block by
    block of images, one int8 GEMM with the weights, rows (C_out, K), gives the accumulators
    ``acc`` (C_out, b OH OW), one output channel per row (per-channel constants are one number
    per row), and the :class:`Requantizer` writes them into the (b, C_out, OH OW) block of the
    (N, C_out, OH, OW) output (its widening copy reads ``acc`` transposed). The im2col
    patches are copied in whichever layout reads longer contiguous runs of the input:

    * channels last, rows ``(u, v, c)``: each patch row is ``kh`` runs of ``kw C_in`` bytes;
    * channels first, the transposed patches with rows ``(c, u, v)`` (the weights' own order):
      each row is ``b OH`` runs of ``OW`` bytes (stride 1 only).
    """
    operands = None if groups != 1 else _int8_operands(q_x, q_weight, z_x, z_w)
    if operands is None:
        return None
    x8, z_x, w8 = operands
    if not -128 <= z_x <= 127 and any(padding):
        return None                                  # the padding value does not fit int8
    n, c_in, h, w = x8.shape
    c_out, _, kh, kw = w8.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    requantize = _requantizer(q_bias, w8, z_x, m0, shift, z_y, lo, hi, n * c_out * oh * ow, channels_first=True)
    if requantize is None:
        return None
    k = kh * kw * c_in
    by_channel = sw == 1 and ow > kw * c_in          # the patches channels first: longer runs
    if by_channel:
        padded = torch.nn.functional.pad(x8, (pw, pw, ph, ph), value=z_x) if ph or pw else x8
        w_rows = w8.reshape(c_out, k)                                            # (c, u, v) order
    else:
        padded = torch.full((n, h + 2 * ph, w + 2 * pw, c_in), z_x, dtype=torch.int8)
        padded[:, ph:ph + h, pw:pw + w, :] = x8.permute(0, 2, 3, 1)             # channels last
        w_rows = w8.permute(0, 2, 3, 1).reshape(c_out, k)                        # (u, v, c) order
    out = torch.empty(n, c_out, oh, ow, dtype=torch.int64)
    images = max(1, BLOCK // (c_out * oh * ow))
    for start in range(0, n, images):
        block = padded[start:start + images]
        b = block.shape[0]
        if by_channel:
            windows = block.unfold(2, kh, sh).unfold(3, kw, sw)                 # (b, C, OH, OW, kh, kw)
            columns = windows.permute(1, 4, 5, 0, 2, 3).reshape(k, b * oh * ow)
        else:
            windows = block.unfold(1, kh, sh).unfold(2, kw, sw)                 # (b, OH, OW, C, kh, kw)
            columns = windows.permute(0, 1, 2, 4, 5, 3).reshape(b * oh * ow, k).t()
        acc = int_mm(w_rows, columns).view(c_out, b, oh * ow)
        requantize(acc, out[start:start + b].view(b, c_out, oh * ow))
    return out
