"""Integer-only layers: quantized fully connected, 2-D convolution and pooling.

Chapter 6: Integer-only inference (lab06_integer_inference).

With ``x = S_X (q_X - Z_X)``, ``W = S_W (q_W - Z_W)``, ``b = S_W S_X q_b`` and
``y = S_Y (q_Y - Z_Y)``, the fully connected layer ``y = W x + b`` becomes

    acc = sum_k (q_W[o,k] - Z_W)(q_X[k] - Z_X) + q_b           (int32 accumulator)
    q_Y = clamp(round(M acc) + Z_Y, qmin, qmax),   M = S_W S_X / S_Y

where ``round(M acc)`` is :func:`qlib.requantize.multiply_by_quantized_multiplier`.
Expanding the product separates what is known ahead of time:

    acc = sum_k q_W q_X  +  [q_b - Z_X sum_k q_W + K Z_W Z_X]  -  Z_W sum_k q_X
          (integer GEMM)     (folded bias: fold_zero_points)      (only if Z_W != 0)

With symmetric weights (``Z_W = 0``) the last term vanishes and the folded
bias is ``q_b - Z_X sum_k q_W``. A fused ReLU is the clamp's lower bound moved up
to ``Z_Y`` (real 0). A convolution is the same computation on the im2col
patches of its input, padded with ``Z_X`` (the integer that stands for 0).

Speed, exactly: numpy and torch have no integer BLAS, so :func:`integer_matmul`
picks the fastest *exact* route: ``torch._int_mm`` (int8 x int8 -> int32) when
both operands fit in int8 (uint8 operands are shifted by 128 and corrected),
float64 BLAS while every partial sum stays below 2^53, and an int64 matmul
otherwise. For 8-bit layers with symmetric weights the bias, both roundings of
the requantization and the output zero point then take one multiply, three
additions and one shift (:func:`_int8_requantized_product`), the same integers
as the readable route. All integers returned are int64 tensors.
"""
from __future__ import annotations

import numbers

import torch

from qlib._checks import as_float_tensor, check_count, check_integer_range
from qlib._reference import reference
from qlib.requantize import INT32_MAX, INT32_MIN, MAX_SHIFT, MIN_SHIFT, _check_zero_point, _int_tensor, _mbqm

#: Largest |integer| that float64 holds exactly, with every integer below it.
FLOAT64_EXACT = 2**53


# --- bias ---------------------------------------------------------------------------------------

@reference
def quantize_bias(bias, input_scale, weight_scale) -> torch.Tensor:
    """The int32 bias ``q_b = round(b / (S_X * S_W))`` of a layer (zero point 0).

    The bias scale ``S_b = S_X * S_W`` makes ``q_b`` addable to the accumulator
    ``sum q_W q_X``, which has that scale. ``S_X * S_W`` is exact in float64 (two
    float32 factors); ``b / S_b`` is computed in float64 and rounded half to even.
    ``weight_scale`` may hold one scale per output channel. Raises ``ValueError``
    if a ``q_b`` does not fit in int32 (the scales are far too small for the bias).
    """
    b = as_float_tensor(bias, "bias").to(torch.float64)
    sx = as_float_tensor(input_scale, "input_scale").to(torch.float32).to(torch.float64)
    sw = as_float_tensor(weight_scale, "weight_scale").to(torch.float32).to(torch.float64)
    if bool((sx <= 0).any()) or bool((sw <= 0).any()):
        raise ValueError("scales must be positive")
    q_b = torch.round(b / (sx * sw))
    if bool((q_b.abs() > INT32_MAX).any()):
        worst = int(q_b.abs().argmax())
        raise ValueError(f"the quantized bias overflows int32 (channel {worst}: {float(q_b.reshape(-1)[worst]):.4g}); "
                         "the bias is too large for the scale S_X * S_W")
    return q_b.to(torch.int64)


def fold_zero_points(q_bias, q_weight, x_zero_point: int, weight_zero_point=0) -> torch.Tensor:
    """The bias with the input zero point's terms folded in, computed once ahead of time.

        folded[o] = q_b[o] - Z_X * sum_k q_W[o, k] + K * Z_W[o] * Z_X

    ``q_weight`` is ``(C_out, ...)``; ``k`` runs over the ``K`` weights of one
    output (``C_in`` for a linear layer, ``C_in/groups * kh * kw`` for a
    convolution). ``weight_zero_point`` is a scalar or one per output channel.
    ``q_bias`` may be ``None`` (no bias). Exact int64 arithmetic.
    """
    q_weight = q_weight if _is_small_int(q_weight) else _int_tensor(q_weight, "q_weight")
    if q_weight.ndim < 2:
        raise ValueError(f"q_weight must have an output axis and at least one more, got shape {tuple(q_weight.shape)}")
    c_out = q_weight.shape[0]
    k = q_weight[0].numel()
    q_bias = _bias_tensor(q_bias, c_out)
    z_x = _check_input_zero_point(x_zero_point)
    z_w = _weight_zero_point(weight_zero_point, c_out)
    return q_bias - z_x * q_weight.reshape(c_out, -1).sum(dim=1, dtype=torch.int64) + k * z_w * z_x


# --- exact integer matrix product ---------------------------------------------------------------

def _fits(lo: int, hi: int, qmin: int, qmax: int) -> bool:
    return qmin <= lo and hi <= qmax


def _byte_sized(lo: int, hi: int) -> bool:
    """True if the values fit in int8 or in uint8."""
    return _fits(lo, hi, -128, 127) or _fits(lo, hi, 0, 255)


def _as_int8(t: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, int]:
    """``t`` as int8 minus an offset (0 for int8 values, 128 for uint8 values): ``t = t8 + offset``."""
    if _fits(lo, hi, -128, 127):
        return (t if t.dtype == torch.int8 else t.to(torch.int8)), 0
    if t.dtype == torch.uint8:
        return (t ^ 0x80).view(torch.int8), 128  # v XOR 0x80 read as int8 is v - 128
    return (t - 128).to(torch.int8), 128


#: ``torch._int_mm`` on CPU (PyTorch 2.13) returns wrong sums when the inner dimension K is 1
#: (every entry, every shape; K = 2 ... 36 measured exact): such products take another route.
INT_MM_MIN_K = 2


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm(a, b)`` with operands it reads correctly.

    On CPU it returns wrong sums for a ``b`` whose rows overlap in memory (an
    im2col view of a stride-1 window, for instance): ``a`` is made contiguous and
    ``b`` row- or column-major.
    """
    if not (b.is_contiguous() or b.t().is_contiguous()):
        b = b.contiguous()
    return torch._int_mm(a.contiguous(), b)


def integer_matmul(a, b) -> torch.Tensor:
    """The exact integer product ``a @ b`` of ``a`` (M, K) and ``b`` (K, N), as int64.

    Three exact routes, fastest first:

    1. both in int8 or uint8 range (and ``2 <= K < 2^17``): ``torch._int_mm`` on int8,
       which accumulates in int32. A uint8 operand is stored as ``a8 = a - 128``
       and corrected: ``a @ b = a8 @ b + 128 * colsum(b)`` (and symmetrically).
       The int32 sums cannot overflow: ``|sum| <= K * 128 * 128 < 2^31``.
    2. ``K * max|a| * max|b| <= 2^53``: float64 BLAS. Proof of exactness: every
       partial sum BLAS forms, in any order and with or without fused
       multiply-add, is a sum of some of the products ``a[m,k] b[k,n]``, so it is
       an integer of magnitude at most ``sum_k |a[m,k]| |b[k,n]| <= 2^53``. Such
       integers are exactly representable in float64, and an IEEE operation whose
       exact result is representable returns it unrounded: no step ever rounds.
    3. otherwise: an int64 matmul, exact while the same bound stays below 2^63
       (``ValueError`` beyond: the products could overflow int64).

    ``a`` and ``b`` hold integers (any integer dtype); a transposed view is fine.
    Route 2 carries the integers in float64 tensors; routes 1 and 3 use integer
    tensors only (8-bit layers, as in the integer digits model, take route 1).
    """
    a = _int_tensor(a, "a") if not _is_small_int(a) else a
    b = _int_tensor(b, "b") if not _is_small_int(b) else b
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"integer_matmul needs 2-D operands, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    return _integer_matmul(a, b)


def _is_small_int(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.int8, torch.uint8) and t.numel() > 0


def _integer_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    k = a.shape[1]
    if k == 0:
        return torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64)
    a_lo, a_hi = (int(v) for v in torch.aminmax(a))
    b_lo, b_hi = (int(v) for v in torch.aminmax(b))
    if _byte_sized(a_lo, a_hi) and _byte_sized(b_lo, b_hi) and INT_MM_MIN_K <= k < 2**17:
        a8, a_off = _as_int8(a, a_lo, a_hi)
        b8, b_off = _as_int8(b, b_lo, b_hi)
        acc = _int_mm(a8, b8).to(torch.int64)
        # (a8 + a_off) @ (b8 + b_off) = a8 @ b8 + a_off * colsum(b8) + b_off * rowsum(a8) + K a_off b_off
        if a_off:
            acc += a_off * b8.sum(dim=0, dtype=torch.int64)
        if b_off:
            acc += b_off * a8.sum(dim=1, dtype=torch.int64, keepdim=True)
        if a_off and b_off:
            acc += k * a_off * b_off
        return acc
    bound = k * max(abs(a_lo), abs(a_hi)) * max(abs(b_lo), abs(b_hi))
    if bound <= FLOAT64_EXACT:
        return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int64)
    if bound >= 2**63:
        raise ValueError(f"the products of these operands could overflow int64 (bound {bound})")
    return a.to(torch.int64) @ b.to(torch.int64)


# --- fully connected and convolution ------------------------------------------------------------

def _bias_tensor(q_bias, c_out: int) -> torch.Tensor:
    if q_bias is None:
        return torch.zeros(c_out, dtype=torch.int64)
    q_bias = _int_tensor(q_bias, "q_bias").reshape(-1)
    if q_bias.numel() != c_out:
        raise ValueError(f"q_bias has {q_bias.numel()} values but the layer has {c_out} outputs")
    return q_bias


def _check_input_zero_point(zero_point) -> int:
    if isinstance(zero_point, torch.Tensor) and zero_point.numel() == 1 and not zero_point.is_floating_point():
        zero_point = int(zero_point.item())
    if isinstance(zero_point, bool) or not isinstance(zero_point, numbers.Integral):
        raise TypeError(f"x_zero_point must be an integer, got {zero_point!r}")
    if not -(2**16) <= zero_point < 2**16:
        raise ValueError(f"x_zero_point={zero_point} is out of range for 8- or 16-bit inputs")
    return int(zero_point)


def _weight_zero_point(weight_zero_point, c_out: int) -> torch.Tensor:
    z = _int_tensor(weight_zero_point, "weight_zero_point", -(2**16), 2**16 - 1).reshape(-1)
    if z.numel() not in (1, c_out):
        raise ValueError(f"weight_zero_point has {z.numel()} values but the layer has {c_out} outputs")
    return z


def _rescale_args(m0, shift, c_out: int):
    m0 = _int_tensor(m0, "m0", 0, INT32_MAX).reshape(-1)
    shift = _int_tensor(shift, "shift", MIN_SHIFT, MAX_SHIFT).reshape(-1)
    for name, v in (("m0", m0), ("shift", shift)):
        if v.numel() not in (1, c_out):
            raise ValueError(f"{name} has {v.numel()} values but the layer has {c_out} outputs")
    return m0, shift


def _output_range(y_zero_point, qmin: int, qmax: int, relu: bool) -> tuple[int, int, int]:
    check_integer_range(qmin, qmax)
    z_y = _check_zero_point(y_zero_point, qmin, qmax)
    return z_y, (max(qmin, z_y) if relu else qmin), qmax


def _requantize_accumulator(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, z_y: int, lo: int,
                            hi: int) -> torch.Tensor:
    """clamp(MBQM(acc) + Z_Y, lo, hi) for the int64 accumulator ``acc`` (rows, C_out), overwritten.

    ``m0``/``shift`` hold one value, or one per output channel (the last axis).
    """
    a_lo, a_hi = (int(v) for v in torch.aminmax(acc))
    if a_lo < INT32_MIN or a_hi > INT32_MAX:
        raise ValueError(f"the accumulator overflows int32 (range {a_lo} ... {a_hi}): the layer is too large "
                         "for 32-bit accumulation at these bit widths")
    if bool((shift < 0).any()):
        scaled = _mbqm(acc, m0, shift)  # a left shift (M >= 1): the readable path
    else:
        scaled = _multiply_in_place(acc, m0, shift)
    return scaled.add_(z_y).clamp_(lo, hi)


def _multiply_in_place(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """multiply_by_quantized_multiplier for ``m0 >= 0`` and right shifts ``n >= 0``, in fewer passes, in place.

    Two integer identities make it cheaper than the readable functions (and a
    test holds the two equal on every shift and on ties):

    * for ``m0 >= 0`` the saturation case (INT32_MIN * INT32_MIN) cannot occur,
      and gemmlowp's ``trunc((ab + nudge) / 2^31)`` equals ``floor((ab + 2^30) / 2^31)``
      (for ab < 0: ceil((ab + 1 - 2^30) / 2^31) = floor((ab + 2^30) / 2^31));
    * the rounding right shift by ``n >= 1`` with ties away from zero is
      ``floor((y + 2^(n-1) - [y < 0]) / 2^n)``, and ``-[y < 0]`` is ``y >> 63``
      (the arithmetic shift copies the sign bit of the int64 ``y`` into every bit).

    ``acc`` (int64, overwritten) may be any shape; ``m0``/``shift`` broadcast against it.
    """
    m0 = int(m0) if m0.numel() == 1 else m0
    acc.mul_(m0).add_(2**30).bitwise_right_shift_(31)
    if shift.numel() == 1:
        n = int(shift)
        if n == 0:
            return acc
        acc.add_(acc >> 63)                      # - [y < 0]
        return acc.add_(2 ** (n - 1)).bitwise_right_shift_(n)
    acc.add_(_minus_one_if_negative(acc, shift))
    return acc.add_((1 << shift) >> 1).bitwise_right_shift_(shift)


def _minus_one_if_negative(y: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``-[y < 0]`` as int64 (the sign bit ``y >> 63``), and 0 where ``shift`` is 0 (no rounding shift there)."""
    correction = y >> 63
    if bool((shift == 0).any()):
        correction &= -(shift > 0).to(torch.int64)
    return correction


def _int8_or_none(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as int8 if all its values fit in int8, else ``None``."""
    if t.dtype == torch.int8:
        return t
    lo, hi = (int(v) for v in torch.aminmax(t))
    return t.to(torch.int8) if _fits(lo, hi, -128, 127) else None


def _int8_requantized_product(x8: torch.Tensor, w8: torch.Tensor, folded_bias: torch.Tensor, m0: torch.Tensor,
                               shift: torch.Tensor, z_y: int, lo: int, hi: int,
                               channels_first: bool = False) -> torch.Tensor | None:
    """``clamp(MBQM(x8 @ w8^T + folded_bias) + Z_Y, lo, hi)`` as int64, in seven passes; ``None`` if it does not apply.

    The result is (rows, C_out), or its transpose (C_out, rows) with ``channels_first``
    (then every per-channel constant is one number per row, which is cheaper to apply).

    The same integers as :func:`_requantize_accumulator` on the int64 accumulator, computed
    from ``torch._int_mm``'s int32 product with both roundings and the zero point in one
    right shift. For ``a = acc + bias`` (an int32), ``m0 >= 0`` and ``n >= 1``:

        u = a m0 + 2^30                                 (the high multiply, before its shift)
        z = floor(u / 2^31)                             (gemmlowp's rounding high multiply)
        r = floor((z + 2^(n-1) - [z < 0]) / 2^n)        (rounding shift, ties away from zero)
          = floor((u + 2^(30+n) - 2^31 [u < 0]) / 2^(31+n))
        r + Z_Y = (u + 2^(30+n) + Z_Y 2^(31+n) - 2^31 [u < 0]) >> (31 + n)

    since ``floor((floor(u / c) + k) / d) = floor((u + k c) / (c d))`` for integers, and
    ``z < 0`` exactly when ``u < 0``. For ``n = 0`` the shift is the identity: no ``2^(30+n)``
    and no correction. ``[u < 0]`` is the sign bit ``-(u >> 63)``, and ``a m0 = acc m0 + bias m0``
    puts the bias into the same addition as ``2^30``; ``Z_Y`` joins it too unless that sum
    could leave int64 (large ``n`` and ``Z_Y``), and is then added after the shift. Applies when
    ``x8`` and ``w8`` are int8 (K < 2^17), every ``shift >= 0`` and the worst-case ``|a|`` is
    below ``2^31`` (so the int32 accumulator cannot overflow and needs no check).
    """
    k = x8.shape[1]
    if x8.dtype != torch.int8 or w8.dtype != torch.int8 or not INT_MM_MIN_K <= k < 2**17 or bool((shift < 0).any()):
        return None
    n_max = int(shift.max())
    bias_max = int(folded_bias.abs().max()) if folded_bias.numel() else 0
    if k * 128 * 128 + bias_max >= 2**31:
        return None
    # |u| < 2^62 + 2^30; with 2^(30+n) and Z_Y 2^(31+n) added the sum must stay inside int64
    fold_zero_point = 2**62 + 2**32 + (abs(z_y) + 1) * 2 ** (31 + n_max) < 2**63
    m0 = m0.reshape(-1).expand(w8.shape[0])      # 1-D int64, so that int32 * m0 is computed in int64
    rounding = torch.where(shift > 0, 1 << (shift + 30), 0)
    if fold_zero_point:
        rounding = rounding + z_y * (1 << (shift + 31))
    if channels_first:                            # int32, exact: |sum| <= K 2^14 < 2^31
        acc = _int_mm(w8, x8.t())
        m0, shift, rounding, folded_bias = (v.reshape(-1, 1) for v in (m0, shift, rounding, folded_bias))
    else:
        acc = _int_mm(x8, w8.t())
    u = torch.mul(acc, m0).add_(folded_bias * m0 + 2**30)
    u.add_(_minus_one_if_negative(u, shift), alpha=2**31).add_(rounding).bitwise_right_shift_(31 + shift)
    if not fold_zero_point:
        u.add_(z_y)
    return u.clamp_(lo, hi)


def _fast_route(x, w_rows, folded_bias, z_w, m0, shift, z_y, lo, hi, channels_first=False) -> torch.Tensor | None:
    """:func:`_int8_requantized_product` where it applies (int8 operands, symmetric weights), else ``None``."""
    if x.numel() == 0 or bool((z_w != 0).any()):
        return None
    x8, w8 = _int8_or_none(x), _int8_or_none(w_rows)
    if x8 is None or w8 is None:
        return None
    return _int8_requantized_product(x8, w8, folded_bias, m0, shift, z_y, lo, hi, channels_first)


def _layer_input(q, name: str, ndim: int) -> torch.Tensor:
    q = q if _is_small_int(q) else _int_tensor(q, name)
    if q.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(q.shape)}")
    return q


@reference
def quantized_linear(q_x, q_weight, q_bias, x_zero_point: int, m0, shift, y_zero_point: int,
                     qmin: int, qmax: int, relu: bool = False, weight_zero_point=0) -> torch.Tensor:
    """Integer-only fully connected layer: int8/uint8 in, int32 accumulate, requantize, int out.

        acc[n, o] = sum_k (q_W[o, k] - Z_W)(q_X[n, k] - Z_X) + q_b[o]
        q_Y[n, o] = clamp(multiply_by_quantized_multiplier(acc, m0, shift) + Z_Y, qmin', qmax)

    with ``qmin' = max(qmin, Z_Y)`` when ``relu`` (fused ReLU), else ``qmin``.
    ``q_x`` is (N, C_in), ``q_weight`` (C_out, C_in), ``q_bias`` (C_out,) int32 at
    scale ``S_X S_W`` (see :func:`quantize_bias`) or ``None``;
    ``(m0, shift) = quantize_multiplier(S_X S_W / S_Y)``, per tensor or one per
    output channel; ``weight_zero_point`` is ``Z_W`` (0 for symmetric weights).
    Rounding: ties toward +infinity in the high multiply, away from zero in the
    shift (gemmlowp). The accumulator must fit in int32 (``ValueError`` otherwise).

    Computed as ``q_X @ q_W^T + fold_zero_points(...) - Z_W rowsum(q_X)`` with the
    exact :func:`integer_matmul`. Returns int64 (N, C_out).
    """
    q_x = _layer_input(q_x, "q_x", 2)
    q_weight = _layer_input(q_weight, "q_weight", 2)
    c_out, c_in = q_weight.shape
    if q_x.shape[1] != c_in:
        raise ValueError(f"q_x has {q_x.shape[1]} features per row but q_weight expects {c_in}")
    z_y, lo, hi = _output_range(y_zero_point, qmin, qmax, relu)
    m0, shift = _rescale_args(m0, shift, c_out)
    z_w = _weight_zero_point(weight_zero_point, c_out)
    q_x, z_x = _signed_bytes(q_x, _check_input_zero_point(x_zero_point))
    folded_bias = fold_zero_points(q_bias, q_weight, z_x, z_w)
    fast = _fast_route(q_x, q_weight, folded_bias, z_w, m0, shift, z_y, lo, hi)
    if fast is not None:
        return fast
    acc = _integer_matmul(q_x, q_weight.t())
    acc += folded_bias
    if bool((z_w != 0).any()):
        acc -= q_x.sum(dim=1, dtype=torch.int64, keepdim=True) * z_w
    return _requantize_accumulator(acc, m0, shift, z_y, lo, hi)


def _pair(v, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an integer or a pair of integers, got {v!r}")
        return check_count(v[0], name, minimum), check_count(v[1], name, minimum)
    v = check_count(v, name, minimum)
    return v, v


def _patches(q_x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The im2col patches of ``q_x`` (N, C, H, W) as a view (N, OH, OW, kh, kw, C).

    Channels last, so that each patch row ``(u, v, c)`` is gathered from runs of
    contiguous channels: much faster to copy than the (c, u, v) order.
    """
    kh, kw = kernel_size
    sh, sw = stride
    channels_last = q_x.permute(0, 2, 3, 1).contiguous()                    # (N, H, W, C)
    patches = channels_last.unfold(1, kh, sh).unfold(2, kw, sw)             # (N, OH, OW, C, kh, kw)
    return patches.permute(0, 1, 2, 4, 5, 3)


@reference
def quantized_conv2d(q_x, q_weight, q_bias, x_zero_point: int, m0, shift, y_zero_point: int, qmin: int,
                     qmax: int, stride=1, padding=0, groups: int = 1, relu: bool = False,
                     weight_zero_point=0) -> torch.Tensor:
    """Integer-only 2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``).

        acc[n, o, i, j] = q_b[o] + sum_{c, u, v} (q_W[o, c, u, v] - Z_W)
                                           * (q_Xpad[n, g(o) C_g + c, s_h i + u, s_w j + v] - Z_X)
        q_Y = clamp(multiply_by_quantized_multiplier(acc, m0, shift) + Z_Y, qmin', qmax)

    ``q_x`` is (N, C_in, H, W), ``q_weight`` (C_out, C_in/groups, kh, kw); output
    channel ``o`` sees the ``C_g = C_in/groups`` input channels of its group
    ``g(o) = o // (C_out/groups)``. ``q_Xpad`` is ``q_x`` padded with ``Z_X`` (the
    integer for real 0, so padding adds nothing). ``stride`` and ``padding`` are
    integers or (h, w) pairs; no dilation. ``relu``, ``m0``/``shift`` (per tensor
    or per output channel), rounding and ``weight_zero_point`` as in
    :func:`quantized_linear`. Computed per group as an exact integer GEMM of the
    im2col patches. Returns int64 (N, C_out, OH, OW) with
    ``OH = (H + 2 p_h - kh) // s_h + 1``.
    """
    q_x = _layer_input(q_x, "q_x", 4)
    q_weight = _layer_input(q_weight, "q_weight", 4)
    groups = check_count(groups, "groups", 1)
    (sh, sw), (ph, pw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    n, c_in, h, w = q_x.shape
    c_out, c_g, kh, kw = q_weight.shape
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both C_in={c_in} and C_out={c_out}")
    if c_g != c_in // groups:
        raise ValueError(f"q_weight has {c_g} input channels per group but q_x has {c_in} channels "
                         f"in {groups} group(s), i.e. {c_in // groups} per group")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"the kernel {kh}x{kw} is larger than the padded input {h + 2 * ph}x{w + 2 * pw}")
    z_x = _check_input_zero_point(x_zero_point)
    z_y, lo, hi = _output_range(y_zero_point, qmin, qmax, relu)
    m0, shift = _rescale_args(m0, shift, c_out)
    z_w = _weight_zero_point(weight_zero_point, c_out)
    q_x, z_x = _signed_bytes(q_x, z_x)
    if ph or pw:
        if q_x.dtype in (torch.int8, torch.uint8) and not _fits(z_x, z_x, *_dtype_range(q_x.dtype)):
            q_x = q_x.to(torch.int64)
        q_x = torch.nn.functional.pad(q_x, (pw, pw, ph, ph), value=z_x)
    patches = _patches(q_x, (kh, kw), (sh, sw))  # (N, OH, OW, kh, kw, C_in)
    oh, ow = patches.shape[1:3]
    c_out_g = c_out // groups
    # each patch row and each weight row in the same (u, v, c) order; one integer GEMM per group
    w_rows = q_weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_g)
    folded_bias = fold_zero_points(q_bias, q_weight, z_x, z_w)
    if groups == 1:
        fast = _fast_route(patches.reshape(n * oh * ow, kh * kw * c_g), w_rows, folded_bias, z_w, m0, shift,
                           z_y, lo, hi, channels_first=True)
        if fast is not None:                      # (C_out, N*OH*OW) -> (N, C_out, OH, OW)
            return fast.reshape(c_out, n, oh, ow).permute(1, 0, 2, 3).contiguous()
    accs, window_sums = [], []
    for g in range(groups):
        cols = patches[..., g * c_g:(g + 1) * c_g].reshape(n * oh * ow, kh * kw * c_g)
        accs.append(_integer_matmul(cols, w_rows[g * c_out_g:(g + 1) * c_out_g].t()))
        if bool((z_w != 0).any()):
            window_sums.append(cols.sum(dim=1, dtype=torch.int64, keepdim=True).expand(-1, c_out_g))
    acc = accs[0] if groups == 1 else torch.cat(accs, dim=1)   # (N*OH*OW, C_out)
    acc += folded_bias
    if window_sums:
        acc -= torch.cat(window_sums, dim=1) * z_w
    q_y = _requantize_accumulator(acc, m0, shift, z_y, lo, hi)
    return q_y.reshape(n, oh, ow, c_out).permute(0, 3, 1, 2).contiguous()


def _signed_bytes(q_x: torch.Tensor, z_x: int) -> tuple[torch.Tensor, int]:
    """The input as int8 where its values allow, which changes no ``q_x - Z_X``.

    uint8 values above 127 and their zero point move down by 128; values that already
    fit in int8 are only stored as int8. Other inputs are returned as they are. Done once
    on the input rather than on every im2col patch.
    """
    lo, hi = (int(v) for v in torch.aminmax(q_x))
    if _fits(lo, hi, -128, 127):
        return _as_int8(q_x, lo, hi)[0], z_x
    if _fits(lo, hi, 0, 255) and 0 <= z_x <= 255:
        return _as_int8(q_x, lo, hi)[0], z_x - 128
    return q_x, z_x


def _dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return info.min, info.max


# --- pooling ------------------------------------------------------------------------------------

def _pool_windows(q_x, kernel_size, stride, name: str):
    """The views ``q_x[..., u::s_h, v::s_w]`` of every window offset (u, v), each (N, C, OH, OW)."""
    q_x = _layer_input(q_x, "q_x", 4)
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = _pair(kernel_size if stride is None else stride, "stride", 1)
    h, w = q_x.shape[2:]
    if h < kh or w < kw:
        raise ValueError(f"{name}: the window {kh}x{kw} is larger than the input {h}x{w}")
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    return [q_x[:, :, u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw] for u in range(kh) for v in range(kw)]


def integer_max_pool2d(q_x, kernel_size, stride=None) -> torch.Tensor:
    """Max pooling on the integers: ``max`` commutes with ``S (q - Z)`` (S > 0), so it is exact.

    Windows ``kernel_size`` (int or pair) moved by ``stride`` (default: the window),
    no padding. Input and output share scale and zero point. Returns int64.
    """
    windows = _pool_windows(q_x, kernel_size, stride, "integer_max_pool2d")
    out = windows[0].clone()                     # in the input's dtype; never write into the input
    for view in windows[1:]:
        torch.maximum(out, view, out=out)
    return out.to(torch.int64)


def integer_avg_pool2d(q_x, kernel_size, stride=None) -> torch.Tensor:
    """Average pooling on the integers: the window sum divided by its size ``c``, rounded half away from zero.

        q_Y = sign(s) * floor((|s| + c // 2) / c),     s = sum of the window's q values

    This is TFLite's integer average pool (``(s +- c/2) / c`` with C's truncating
    division): round to nearest, ties away from zero (a tie needs ``c`` even).
    The raw ``q`` values are averaged; input and output share scale and zero
    point (``avg(q) - Z = avg(q - Z)`` before rounding). Windows as in
    :func:`integer_max_pool2d`. Returns int64.
    """
    windows = _pool_windows(q_x, kernel_size, stride, "integer_avg_pool2d")
    c = len(windows)
    s = windows[0].to(torch.int64, copy=True)
    for view in windows[1:]:
        s += view
    return torch.sign(s) * torch.div(s.abs() + c // 2, c, rounding_mode="floor")
