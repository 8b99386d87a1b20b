"""Fast exact kernels behind :mod:`qlib.integer_layers`: the same integers, in fewer and cheaper passes.

Chapter 6: Integer-only inference (lab06_integer_inference).

:mod:`qlib.integer_layers` is the reference the chapter cites: a layer there reads as its
formula (accumulate, add the bias, rescale, add the output zero point, clamp) on int64
tensors. PyTorch has no integer BLAS, and every elementwise step is one more pass over memory,
so for 8-bit operands those functions hand the work to this module (one dispatch line each).
It returns the same integers, bit for bit (``tests/test_integer_kernels.py`` holds the two
equal on random shapes and on the extremes), by four tricks, each proved where it is used:

1. :func:`exact_matmul`: an exact integer GEMM from ``torch._int_mm`` (int8 x int8 -> int32)
   or from float64 BLAS while every partial sum stays below 2^53;
2. :func:`as_signed_bytes`: uint8 activations become int8 by moving values and zero point
   down by 128, which changes no ``q_X - Z_X``;
3. :class:`Requantizer`: gemmlowp's two roundings, the bias and the output zero point in one
   multiply, one addition and one shift of the int32 accumulator widened to int64;
4. the convolution's im2col patches built once, channels last, from an int8 input padded with
   ``Z_X``, and one GEMM for all images.
"""
from __future__ import annotations

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


# --- requantization in one pass of each kind ----------------------------------------------------------

class Requantizer:
    """``clamp(MBQM(acc + bias) + Z_Y, lo, hi)`` of an int32 accumulator, the same integers as gemmlowp.

    ``MBQM`` is :func:`qlib.requantize.multiply_by_quantized_multiplier` with ``m0 >= 0`` and a
    right shift ``n >= 0``: ``z = SRDHM(a, m0)`` then ``RDBPOT(z, n)``. For ``a = acc + bias``:

        u = a m0 + 2^30                               the high multiply before its shift
        z = floor(u / 2^31)                           SRDHM (ties toward +inf; no saturation for m0 >= 0)
        r = floor((z + 2^(n-1) - [z < 0]) / 2^n)      RDBPOT, n >= 1 (ties away from zero)
          = floor((u + 2^(30+n) - 2^31 [u < 0]) / 2^(31+n))
        r + Z_Y = (a m0 + K - 2^31 [a < 0]) >> (31 + n),   K = 2^30 + 2^(30+n) + Z_Y 2^(31+n)

    * the nested floors merge: ``floor((floor(u / c) + j) / d) = floor((u + j c) / (c d))`` for
      integers ``u, j`` and ``c, d > 0``; ``z < 0`` exactly when ``u < 0``;
    * ``[u < 0]`` may be read as ``[a < 0]``, the sign bit of the int32 ``a`` (``-(a >> 31)``):
      they differ only for ``a < 0 <= u``, i.e. ``0 <= u <= 2^30``, where ``z = 0`` and both
      numerators lie in ``[2^(30+n) - 2^31, 2^(30+n)] ⊂ [0, 2^(31+n))`` for ``n >= 1``: ``r = 0`` either way;
    * for ``n = 0`` there is no second rounding: ``r = floor(u / 2^31)``, ``K = 2^30 + Z_Y 2^31``
      and no sign term;
    * the sign term only matters for negative ``r``: if ``lo >= Z_Y`` (a fused ReLU) every
      negative ``r`` is clamped to ``lo`` anyway, and it is left out.

    Passes: the bias added to the int32 accumulator (which the caller guarantees cannot
    overflow: ``|acc| + max|bias| < 2^31``), then in int64 one multiply by ``m0``, one addition
    of ``K`` (and of ``2^31 (a >> 31)`` when signs matter), one arithmetic right shift (floor),
    one clamp. ``|a m0| < 2^62``, so ``K`` holds ``Z_Y 2^(31+n)`` only while the sum stays inside
    int64; otherwise ``Z_Y`` is added after the shift.

    ``bias``, ``m0``, ``shift``: int64, one value or one per output channel; ``channel_dim``
    is where the channels lie in the accumulators this will be applied to (-1: last, -2: rows).
    """

    def __init__(self, bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, z_y: int, lo: int, hi: int,
                 channel_dim: int = -1):
        shape = (-1,) if channel_dim == -1 else (-1, 1)
        n_max = int(shift.max())
        self.lo, self.hi = lo, hi
        self.bias = bias.to(torch.int32).reshape(shape) if bool(bias.any()) else None
        self.sign = n_max > 0 and lo < z_y
        self.sign_mask = None
        if self.sign and bool((shift == 0).any()):
            self.sign_mask = (shift > 0).to(torch.int32).reshape(shape)   # no sign term where n = 0
        # |a m0| < 2^62, |2^31 (a >> 31)| <= 2^31, 2^30 + 2^(30+n) <= 2^62: room for Z_Y 2^(31+n)?
        self.z_y_after = 2**62 + 2**31 + 2**30 + 2 ** (30 + n_max) + abs(z_y) * 2 ** (31 + n_max) >= 2**63
        self.z_y = z_y
        k = (1 << 30) + torch.where(shift > 0, 1 << (shift + 30), 0)
        if not self.z_y_after:
            k = k + z_y * (1 << (shift + 31))
        if m0.numel() == 1 and shift.numel() == 1:      # one multiplier: Python numbers are cheaper
            self.m0, self.k, self.total_shift = int(m0), int(k), 31 + int(shift)
        else:
            self.m0 = m0.reshape(shape)
            self.k = k.expand_as(m0).reshape(shape) if k.numel() == 1 else k.reshape(shape)
            self.total_shift = (shift + 31).reshape(shape)

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        """The output integers (int64) of the int32 accumulators ``acc``, which are overwritten."""
        if self.bias is not None:
            acc.add_(self.bias)                          # a = acc + bias, int32
        sign = None
        if self.sign:
            sign = acc >> 31                             # -[a < 0]
            if self.sign_mask is not None:
                sign.mul_(self.sign_mask)
        u = _rescale_in_place(acc.to(torch.int64), sign, self.m0, self.k, self.total_shift)
        if self.z_y_after:
            u.add_(self.z_y)
        return u.clamp_(self.lo, self.hi)


def multiply_by_quantized_multiplier_in_place(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """:func:`qlib.requantize.multiply_by_quantized_multiplier` for ``m0 >= 0`` and right shifts ``n >= 0``, in place.

    The :class:`Requantizer`'s formula without bias, zero point and clamp:

        MBQM(a) = (a m0 + 2^30 + 2^(30+n) - 2^31 [a < 0]) >> (31 + n)     for n >= 1
        MBQM(a) = (a m0 + 2^30) >> 31                                     for n = 0

    with ``-[a < 0]`` the sign bit ``a >> 63`` of the int64 ``a``. ``acc`` (int64 holding int32
    values, any shape) is overwritten and returned; ``m0``/``shift`` broadcast against it.
    """
    if shift.numel() == 1:
        n = int(shift)
        sign = acc >> 63 if n else None                      # -[a < 0], before acc is overwritten
        m0 = int(m0) if m0.numel() == 1 else m0
        return _rescale_in_place(acc, sign, m0, 2**30 + (2 ** (30 + n) if n else 0), 31 + n)
    sign = acc >> 63
    if bool((shift == 0).any()):
        sign.mul_(shift > 0)
    return _rescale_in_place(acc, sign, m0, (1 << 30) + torch.where(shift > 0, 1 << (shift + 30), 0), 31 + shift)


def _rescale_in_place(u: torch.Tensor, sign, m0, k, total_shift) -> torch.Tensor:
    """``(u m0 + k + 2^31 sign) >> total_shift`` in place: the one formula of the :class:`Requantizer`."""
    u.mul_(m0).add_(k)
    if sign is not None:
        u.add_(sign, alpha=2**31)
    return u.bitwise_right_shift_(total_shift)


def _folded_bias(q_bias: torch.Tensor, w8: torch.Tensor, z_x: int) -> torch.Tensor:
    """``q_b - Z_X sum_k q_W[o, k]`` (int64): the input zero point folded into the bias."""
    if z_x == 0:
        return q_bias
    sums = w8.reshape(w8.shape[0], -1).sum(dim=1, dtype=torch.int32)   # |sum| <= K 128 < 2^24
    return q_bias - z_x * sums.to(torch.int64)


def _requantizer(q_bias, w8, z_x, m0, shift, z_y, lo, hi, channel_dim) -> Requantizer | None:
    """The :class:`Requantizer` of an 8-bit layer, or ``None`` if the fused route does not apply."""
    if bool((shift < 0).any()) or bool((m0 < 0).any()):
        return None
    k = w8[0].numel()
    if not INT_MM_MIN_K <= k < INT_MM_MAX_K:
        return None
    bias = _folded_bias(q_bias, w8, z_x)
    # |acc| <= K * 128 * 128: with the bias the int32 accumulator must not overflow
    if k * 128 * 128 + int(bias.abs().max()) >= 2**31:
        return None
    return Requantizer(bias, m0, shift, z_y, lo, hi, channel_dim)


# --- the layers ---------------------------------------------------------------------------------------

def quantized_linear_int8(q_x, q_weight, q_bias, z_x, z_w, m0, shift, z_y, lo, hi) -> torch.Tensor | None:
    """:func:`qlib.integer_layers.quantized_linear` for 8-bit operands and symmetric weights, else ``None``.

    Arguments as checked there: ``q_x`` (N, C_in), ``q_weight`` (C_out, C_in) integer tensors,
    ``q_bias`` int64 (C_out,), ``z_w``, ``m0``, ``shift`` int64 with one value or one per output.
    ``acc = int_mm(q_X8, q_W8^T)`` (N, C_out) in int32, then the :class:`Requantizer`.
    """
    if q_x.numel() == 0 or bool((z_w != 0).any()):
        return None
    signed = as_signed_bytes(q_x, z_x)
    w8 = int8_or_none(q_weight)
    if signed is None or w8 is None:
        return None
    x8, z_x = signed
    requantize = _requantizer(q_bias, w8, z_x, m0, shift, z_y, lo, hi, channel_dim=-1)
    if requantize is None:
        return None
    return requantize(int_mm(x8, w8.t()))


def quantized_conv2d_int8(q_x, q_weight, q_bias, z_x, z_w, m0, shift, z_y, lo, hi, stride, padding,
                          groups) -> torch.Tensor | None:
    """:func:`qlib.integer_layers.quantized_conv2d` for 8-bit operands, symmetric weights, one group; else ``None``.

    The input becomes int8 once (:func:`as_signed_bytes`), is padded with ``Z_X`` channels last,
    and its im2col patches, rows ``(u, v, c)`` like the weight rows, make one int8 matrix
    (N OH OW, kh kw C_in). ``acc = int_mm(W8, patches^T)`` (C_out, N OH OW) has one output
    channel per row, so every per-channel constant of the :class:`Requantizer` is one number
    per row; the result is then laid out as (N, C_out, OH, OW).
    """
    if groups != 1 or q_x.numel() == 0 or bool((z_w != 0).any()):
        return None
    signed = as_signed_bytes(q_x, z_x)
    w8 = int8_or_none(q_weight)
    if signed is None or w8 is None:
        return None
    x8, z_x = signed
    if not -128 <= z_x <= 127 and any(padding):
        return None                                  # the padding value does not fit int8
    requantize = _requantizer(q_bias, w8, z_x, m0, shift, z_y, lo, hi, channel_dim=-2)
    if requantize is None:
        return None
    n, c_in, h, w = x8.shape
    c_out, _, kh, kw = w8.shape
    (sh, sw), (ph, pw) = stride, padding
    padded = torch.full((n, h + 2 * ph, w + 2 * pw, c_in), z_x, dtype=torch.int8)
    padded[:, ph:ph + h, pw:pw + w, :] = x8.permute(0, 2, 3, 1)                 # channels last
    patches = padded.unfold(1, kh, sh).unfold(2, kw, sw)                        # (N, OH, OW, C, kh, kw)
    oh, ow = patches.shape[1:3]
    patches = patches.permute(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * c_in)
    w_rows = w8.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in)             # the same (u, v, c) order
    q_y = requantize(int_mm(w_rows, patches.t()))                              # (C_out, N OH OW)
    return q_y.reshape(c_out, n, oh, ow).permute(1, 0, 2, 3).contiguous()
