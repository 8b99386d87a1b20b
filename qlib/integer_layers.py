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

The functions here are the reference: each reads as its formula, on int64 tensors.
Where one line says so they hand 8-bit work to :mod:`qlib.integer_kernels`, which
returns the same integers (``tests/test_integer_kernels.py`` holds them equal bit for
bit) several times faster. All integers returned are int64 tensors.
"""
from __future__ import annotations

import numbers

import torch

from qlib import integer_kernels
from qlib._checks import as_float_tensor, check_count, check_integer_range
from qlib._reference import reference
from qlib.integer_kernels import is_byte_tensor
# the kernels' multiplier under the name tests/test_requantize.py holds to gemmlowp's
from qlib.integer_kernels import multiply_by_quantized_multiplier_in_place as _multiply_in_place  # noqa: F401
from qlib.requantize import INT32_MAX, INT32_MIN, MAX_SHIFT, MIN_SHIFT, _check_zero_point, _int_tensor, _mbqm


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
    q_weight = q_weight if is_byte_tensor(q_weight) else _ints(q_weight, "q_weight")
    if q_weight.ndim < 2:
        raise ValueError(f"q_weight must have an output axis and at least one more, got shape {tuple(q_weight.shape)}")
    c_out = q_weight.shape[0]
    k = q_weight[0].numel()
    q_bias = _bias_tensor(q_bias, c_out)
    z_x = _check_input_zero_point(x_zero_point)
    z_w = _weight_zero_point(weight_zero_point, c_out)
    return q_bias - z_x * q_weight.reshape(c_out, -1).sum(dim=1, dtype=torch.int64) + k * z_w * z_x


# --- exact integer matrix product ---------------------------------------------------------------

def integer_matmul(a, b) -> torch.Tensor:
    """The exact integer product ``a @ b`` of ``a`` (M, K) and ``b`` (K, N), as int64.

        out[m, n] = sum_k a[m, k] b[k, n]

    computed without rounding: in int64 it is exact while ``K max|a| max|b| < 2^63``
    (``ValueError`` beyond, where the products could overflow). PyTorch has no integer
    BLAS, so :func:`qlib.integer_kernels.exact_matmul` takes the work where it has an exact
    fast route: ``torch._int_mm`` for int8/uint8 operands (as in 8-bit layers), float64 BLAS
    while every partial sum stays below 2^53 (then float64 tensors carry the integers).

    ``a`` and ``b`` hold integers (any integer dtype); a transposed view is fine.
    """
    a = a if is_byte_tensor(a) else _ints(a, "a")
    b = b if is_byte_tensor(b) else _ints(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"integer_matmul needs 2-D operands, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    return _integer_matmul(a, b)


def _integer_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    fast = integer_kernels.exact_matmul(a, b)      # int8 GEMM or float64 BLAS where exact, else None
    if fast is not None:
        return fast
    bound = a.shape[1] * int(a.abs().max()) * int(b.abs().max())
    if bound >= 2**63:
        raise ValueError(f"the products of these operands could overflow int64 (bound {bound})")
    return a.to(torch.int64) @ b.to(torch.int64)


# --- argument checks ----------------------------------------------------------------------------

#: Integer dtypes whose tensors are checked with one ``aminmax``.
_INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _ints(x, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> torch.Tensor:
    """``x`` as an int64 tensor of integers in [lo, hi], as :func:`qlib.requantize._int_tensor` checks it.

    An integer tensor whose smallest and largest values lie in range passes with one ``aminmax``;
    anything else goes through ``_int_tensor``, which accepts or explains the refusal.
    """
    if isinstance(x, torch.Tensor) and x.dtype in _INTEGER_DTYPES and x.numel() > 0:
        x_lo, x_hi = torch.aminmax(x)
        if lo <= int(x_lo) and int(x_hi) <= hi:
            return x.to(torch.int64)
    return _int_tensor(x, name, lo, hi)


def _bias_tensor(q_bias, c_out: int) -> torch.Tensor:
    if q_bias is None:
        return torch.zeros(c_out, dtype=torch.int64)
    q_bias = _ints(q_bias, "q_bias").reshape(-1)
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
    z = _ints(weight_zero_point, "weight_zero_point", -(2**16), 2**16 - 1).reshape(-1)
    if z.numel() not in (1, c_out):
        raise ValueError(f"weight_zero_point has {z.numel()} values but the layer has {c_out} outputs")
    return z


def _rescale_args(m0, shift, c_out: int):
    m0 = _ints(m0, "m0", 0, INT32_MAX).reshape(-1)
    shift = _ints(shift, "shift", MIN_SHIFT, MAX_SHIFT).reshape(-1)
    for name, v in (("m0", m0), ("shift", shift)):
        if v.numel() not in (1, c_out):
            raise ValueError(f"{name} has {v.numel()} values but the layer has {c_out} outputs")
    return m0, shift


def _output_range(y_zero_point, qmin: int, qmax: int, relu: bool) -> tuple[int, int, int]:
    check_integer_range(qmin, qmax)
    z_y = _check_zero_point(y_zero_point, qmin, qmax)
    return z_y, (max(qmin, z_y) if relu else qmin), qmax


def _layer_input(q, name: str, ndim: int) -> torch.Tensor:
    q = q if is_byte_tensor(q) else _ints(q, name)
    if q.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(q.shape)}")
    return q


def _pair(v, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an integer or a pair of integers, got {v!r}")
        return check_count(v[0], name, minimum), check_count(v[1], name, minimum)
    v = check_count(v, name, minimum)
    return v, v


# --- requantization -----------------------------------------------------------------------------

def _requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, z_y: int, lo: int,
                hi: int) -> torch.Tensor:
    """``clamp(multiply_by_quantized_multiplier(acc, m0, shift) + Z_Y, lo, hi)`` of the int64 ``acc`` (rows, C_out).

    ``m0``/``shift`` hold one value, or one per output channel (the last axis). ``ValueError``
    if an accumulator does not fit in int32, the register it stands for.
    """
    a_lo, a_hi = (int(v) for v in torch.aminmax(acc))
    if a_lo < INT32_MIN or a_hi > INT32_MAX:
        raise ValueError(f"the accumulator overflows int32 (range {a_lo} ... {a_hi}): the layer is too large "
                         "for 32-bit accumulation at these bit widths")
    return (_mbqm(acc, m0, shift) + z_y).clamp(lo, hi)


def _layer_arguments(q_bias, x_zero_point, weight_zero_point, m0, shift, y_zero_point, qmin, qmax, relu,
                     c_out: int) -> tuple:
    """The checked per-layer arguments of both integer layers: ``(q_bias, Z_X, Z_W, M0, shift, Z_Y, lo, hi)``."""
    z_x = _check_input_zero_point(x_zero_point)
    z_y, lo, hi = _output_range(y_zero_point, qmin, qmax, relu)
    m0, shift = _rescale_args(m0, shift, c_out)
    return _bias_tensor(q_bias, c_out), z_x, _weight_zero_point(weight_zero_point, c_out), m0, shift, z_y, lo, hi


# --- fully connected and convolution ------------------------------------------------------------

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
    q_bias, z_x, z_w, m0, shift, z_y, lo, hi = _layer_arguments(q_bias, x_zero_point, weight_zero_point, m0, shift,
                                                               y_zero_point, qmin, qmax, relu, c_out)
    fast = integer_kernels.quantized_linear_int8(q_x, q_weight, q_bias, z_x, z_w, m0, shift, z_y, lo, hi)
    if fast is not None:                                   # 8-bit operands: the same integers, faster
        return fast
    acc = _integer_matmul(q_x, q_weight.t())              # sum_k q_X[n, k] q_W[o, k]
    acc += fold_zero_points(q_bias, q_weight, z_x, z_w)   # + q_b - Z_X sum_k q_W + K Z_W Z_X
    if bool((z_w != 0).any()):
        acc -= q_x.sum(dim=1, dtype=torch.int64, keepdim=True) * z_w   # - Z_W sum_k q_X
    return _requantize(acc, m0, shift, z_y, lo, hi)       # rescale, + Z_Y, clamp


def _patches(q_x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The im2col patches of ``q_x`` (N, C, H, W) as a view (N, OH, OW, kh, kw, C)."""
    kh, kw = kernel_size
    sh, sw = stride
    patches = q_x.unfold(2, kh, sh).unfold(3, kw, sw)           # (N, C, OH, OW, kh, kw)
    return patches.permute(0, 2, 3, 4, 5, 1)


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
    q_bias, z_x, z_w, m0, shift, z_y, lo, hi = _layer_arguments(q_bias, x_zero_point, weight_zero_point, m0, shift,
                                                               y_zero_point, qmin, qmax, relu, c_out)
    fast = integer_kernels.quantized_conv2d_int8(q_x, q_weight, q_bias, z_x, z_w, m0, shift, z_y, lo, hi,
                                                 (sh, sw), (ph, pw), groups)
    if fast is not None:                                   # 8-bit operands, one group: the same integers, faster
        return fast
    q_xpad = torch.nn.functional.pad(q_x.to(torch.int64), (pw, pw, ph, ph), value=z_x)
    patches = _patches(q_xpad, (kh, kw), (sh, sw))         # (N, OH, OW, kh, kw, C_in)
    oh, ow = patches.shape[1:3]
    w_rows = q_weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_g)    # the same (u, v, c) order
    c_out_g = c_out // groups
    accs = []
    for g in range(groups):                                # one integer GEMM per group
        cols = patches[..., g * c_g:(g + 1) * c_g].reshape(n * oh * ow, kh * kw * c_g)
        outputs = slice(g * c_out_g, (g + 1) * c_out_g)
        acc = _integer_matmul(cols, w_rows[outputs].t())   # sum_{u, v, c} q_X q_W
        z_w_g = z_w if z_w.numel() == 1 else z_w[outputs]
        if bool((z_w_g != 0).any()):
            acc -= cols.sum(dim=1, dtype=torch.int64, keepdim=True) * z_w_g   # - Z_W sum_{u, v, c} q_X
        accs.append(acc)
    acc = torch.cat(accs, dim=1)                           # (N OH OW, C_out)
    acc += fold_zero_points(q_bias, q_weight, z_x, z_w)    # + q_b - Z_X sum q_W + K Z_W Z_X
    q_y = _requantize(acc, m0, shift, z_y, lo, hi)         # rescale, + Z_Y, clamp
    return q_y.reshape(n, oh, ow, c_out).permute(0, 3, 1, 2).contiguous()


# --- pooling ------------------------------------------------------------------------------------

def _pool_args(q_x, kernel_size, stride, name: str):
    """``q_x`` checked, the window ``(kh, kw)``, the stride ``(sh, sw)`` and the output size ``(OH, OW)``."""
    q_x = _layer_input(q_x, "q_x", 4)
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = _pair(kernel_size if stride is None else stride, "stride", 1)
    h, w = q_x.shape[2:]
    if h < kh or w < kw:
        raise ValueError(f"{name}: the window {kh}x{kw} is larger than the input {h}x{w}")
    return q_x, (kh, kw), (sh, sw), ((h - kh) // sh + 1, (w - kw) // sw + 1)


def _pool_windows(q_x, kernel_size, stride, name: str):
    """The views ``q_x[..., u::s_h, v::s_w]`` of every window offset (u, v), each (N, C, OH, OW)."""
    q_x, (kh, kw), (sh, sw), (oh, ow) = _pool_args(q_x, kernel_size, stride, name)
    return [q_x[:, :, u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw] for u in range(kh) for v in range(kw)]


def integer_max_pool2d(q_x, kernel_size, stride=None) -> torch.Tensor:
    """Max pooling on the integers: ``max`` commutes with ``S (q - Z)`` (S > 0), so it is exact.

    Windows ``kernel_size`` (int or pair) moved by ``stride`` (default: the window),
    no padding. Input and output share scale and zero point. Returns int64.

    The maximum over a window is the maximum over its rows of the maximum over its columns:
    first over the ``kw`` column offsets (N, C, H, OW), then over the ``kh`` row offsets.
    """
    q_x, (kh, kw), (sh, sw), (oh, ow) = _pool_args(q_x, kernel_size, stride, "integer_max_pool2d")
    columns = [q_x[:, :, :, v:v + sw * (ow - 1) + 1:sw] for v in range(kw)]      # each (N, C, H, OW)
    rows = _maximum(columns)
    out = _maximum([rows[:, :, u:u + sh * (oh - 1) + 1:sh] for u in range(kh)])   # (N, C, OH, OW)
    return out.to(torch.int64, copy=kh == kw == 1)   # a new tensor: never a view of the input


def _maximum(views: list[torch.Tensor]) -> torch.Tensor:
    """The elementwise maximum of ``views``, in their dtype: a new tensor if there are two or more."""
    if len(views) == 1:
        return views[0]
    out = torch.maximum(views[0], views[1])
    for view in views[2:]:
        torch.maximum(out, view, out=out)
    return out


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
