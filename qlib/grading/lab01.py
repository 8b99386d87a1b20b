"""Checks for lab01_number_formats, called by the lab's test cells.

Same contract as :mod:`qlib.grading.lab03`: without ``seed`` the visible cases,
explained in full; with ``seed`` the hidden cases (every code of the small
formats, fixed-seed random values, exact ties, subnormals, overflow), whose
failures name the kind of input and the likely mistake but never the input.
"""
from __future__ import annotations

import math

import numpy as np

from qlib import fixed_point as ref_fixed
from qlib import floating_point as ref_float
from qlib import integers as ref_int
from qlib import microscaling as ref_mx
from qlib.grading.answers import Field, Tier, check_choice, check_number, config_of, measured_design, measured_once
from qlib.grading.checks_common import hidden_case, passed, task_runner, with_hint
from qlib.grading.harness import as_integers, call_catching, fail, time_limit  # noqa: F401 (used by the lab)

REFERENCES = (
    "encode_integer", "decode_integer", "encode_fixed", "decode_fixed", "encode_float", "encode_floats",
    "round_to_format", "mx_quantize", "mx_dequantize", "mx_shared_exponent", "mx_fake_quantize",
)
EARLIER_TASKS = {"mx_quantize": ("encode_float",)}
STAND_INS = {"encode_float": ref_float.encode_float}
_run = task_runner(REFERENCES, EARLIER_TASKS, STAND_INS)


def _as_int(value, what, task) -> int:
    arr = as_integers(value, what, task)
    if arr.size != 1:
        fail(f"{task}: {what} should be a single integer, got an array of shape {arr.shape}.")
    return int(arr.reshape(()))


# --- Tasks 1 and 2: integers -----------------------------------------------------------------

def _integer_cases(seed):
    if seed is None:
        return [(49, 8, "unsigned"), (-49, 8, "sign_magnitude"), (-49, 8, "twos_complement"),
                (-128, 8, "twos_complement"), (0, 4, "sign_magnitude")]
    gen = np.random.default_rng(seed)
    cases = [(v, 8, enc) for enc in ref_int.ENCODINGS for v in range(*_span(8, enc))]
    for _ in range(200):
        bits = int(gen.integers(2, 33))
        enc = ref_int.ENCODINGS[int(gen.integers(0, 3))]
        lo, hi = ref_int.integer_bounds(bits, enc)
        cases.append((int(gen.integers(lo, hi + 1)), bits, enc))
        cases.append(((lo, hi)[int(gen.integers(0, 2))], bits, enc))
    return cases


def _span(bits, encoding):
    lo, hi = ref_int.integer_bounds(bits, encoding)
    return lo, hi + 1


def _integer_hint(encoding, value) -> str:
    if encoding == "sign_magnitude":
        return "sign-magnitude: first bit 1 for a negative value, then the bits of |value|."
    if encoding == "twos_complement" and value < 0:
        return "two's complement of a negative value: the bits of 2^bits + value (value mod 2^bits)."
    return "the binary digits of the value, padded with leading zeros to exactly `bits` characters."


def check_encode_integer(encode_integer, seed=None):
    """Task 1: integers to bit strings, in three encodings, with range errors."""
    task = "encode_integer"
    cases = _integer_cases(seed)
    for value, bits, encoding in cases:
        expected = ref_int.encode_integer(value, bits, encoding)
        got = _run(task, encode_integer, value, bits, encoding)
        if not isinstance(got, str):
            fail(f"{task}: should return a string of '0' and '1', got {type(got).__name__}.")
        if got != expected:
            hint = _integer_hint(encoding, value)
            if len(got) != bits:
                hint = f"the string must have exactly {bits} characters (pad with leading zeros)."
            fail(with_hint(f"{task}({value}, {bits}, {encoding!r}): expected {expected!r}, got {got!r}.", hint)
                 if seed is None else
                 hidden_case(f"encode_integer ({encoding}, {'negative' if value < 0 else 'non-negative'} values)",
                             hint))
    # out of range must raise ValueError
    for value, bits, encoding in [(128, 8, "twos_complement"), (-1, 8, "unsigned"), (-128, 8, "sign_magnitude"),
                                  (256, 8, "unsigned")]:
        try:
            encode_integer_result = _run_expecting_error(task, encode_integer, value, bits, encoding)
        except _RaisedValueError:
            continue
        lo, hi = ref_int.integer_bounds(bits, encoding)
        fail(f"{task}({value}, {bits}, {encoding!r}): {value} is outside [{lo}, {hi}] and should raise "
             f"ValueError, but the function returned {encode_integer_result!r}.")
    passed(task, len(cases) + 4, hidden=seed is not None)


class _RaisedValueError(Exception):
    pass


def _run_expecting_error(task, fn, *args):
    """Run ``fn``; raise _RaisedValueError if it raised ValueError, else return its result."""
    outcome = _run(task, call_catching, fn, *args)
    if outcome[0] == "raised":
        if "ValueError" in outcome[1]:
            raise _RaisedValueError()
        fail(f"{task}: your function raised {outcome[1][0]}: {outcome[2]}")
    return outcome[1]


def check_decode_integer(decode_integer, seed=None):
    """Task 2: bit strings to integers."""
    task = "decode_integer"
    cases = _integer_cases(seed)
    extra = [("10000000", "sign_magnitude")] if seed is not None else []
    pairs = [(ref_int.encode_integer(v, b, e), e) for v, b, e in cases] + extra
    for bit_string, encoding in pairs:
        expected = ref_int.decode_integer(bit_string, encoding)
        got = _as_int(_run(task, decode_integer, bit_string, encoding), "the result", task)
        if got != expected:
            hint = _integer_hint(encoding, expected)
            if encoding == "twos_complement" and expected < 0:
                hint = "a leading 1 in two's complement is worth -2^(bits-1): subtract 2^bits from the unsigned value."
            if bit_string == "10000000":
                hint = "in sign-magnitude, 1000...0 is negative zero, which is the integer 0."
            fail(with_hint(f"{task}({bit_string!r}, {encoding!r}): expected {expected}, got {got}.", hint)
                 if seed is None else hidden_case(f"decode_integer ({encoding})", hint))
    passed(task, len(pairs), hidden=seed is not None)


# --- Task 3: fixed point ---------------------------------------------------------------------

def check_fixed_point(encode_fixed, decode_fixed, seed=None):
    """Task 3: <w, f> fixed point, round half to even, saturating."""
    task = "encode_fixed"
    if seed is None:
        cases = [(3.0625, 8, 4), (-3.0625, 8, 4), (0.03125, 8, 4), (0.09375, 8, 4), (100.0, 8, 4)]
    else:
        gen = np.random.default_rng(seed)
        cases = []
        for i in range(300):
            w = int(gen.integers(4, 33))
            f = int(gen.integers(0, w))
            lo, hi = ref_fixed.fixed_point_range(w, f)
            if i % 3 == 0:  # exact ties: (k + 1/2) * 2^-f
                k = int(gen.integers(int(lo * 2**f), int(hi * 2**f)))
                x = math.ldexp(k + 0.5, -f)
                kind = "exactly halfway between two codes"
            elif i % 3 == 1:
                x = float(gen.uniform(lo, hi))
                kind = "inside the range"
            else:
                x = float(gen.uniform(hi + 1, 2 * hi + 2)) * (1 if i % 2 else -1)
                kind = "outside the range"
            cases.append((x, w, f, kind))
    for case in cases:
        x, w, f = case[:3]
        expected = ref_fixed.encode_fixed(x, w, f)
        got = _as_int(_run(task, encode_fixed, x, w, f), "raw", task)
        if got != expected:
            scaled = math.ldexp(x, f)
            if got == math.floor(scaled) or got == math.floor(scaled + 0.5):
                hint = "round x * 2^f to the nearest integer, ties to even (round() or np.round, not floor or int())."
            elif got == int(math.copysign(math.floor(abs(scaled) + 0.5), scaled)):
                hint = "ties go to the even integer (round half to even), not away from zero."
            elif not ref_int.integer_bounds(w)[0] <= got <= ref_int.integer_bounds(w)[1]:
                hint = f"saturate: clamp the result to [-2^(w-1), 2^(w-1) - 1]."
            else:
                hint = "raw = clamp(round(x * 2^frac_bits), -2^(total_bits-1), 2^(total_bits-1) - 1)."
            fail(with_hint(f"{task}({x}, total_bits={w}, frac_bits={f}): expected {expected}, got {got}.", hint)
                 if seed is None else hidden_case(f"encode_fixed on values {case[3]}", hint))
    task = "decode_fixed"
    for raw, f in [(49, 4), (-49, 4), (127, 0), (-128, 7), (1, 20)]:
        expected = ref_fixed.decode_fixed(raw, f)
        got = _run(task, decode_fixed, raw, f)
        try:
            ok = float(got) == expected
        except (TypeError, ValueError):
            ok = False
        if not ok:
            fail(f"{task}({raw}, frac_bits={f}): expected {expected!r}, got {got!r}. Hint: value = raw * 2^-frac_bits.")
    passed("fixed point", len(cases) + 5, hidden=seed is not None)


# --- Task 4: floating point -------------------------------------------------------------------

SMALL_FORMATS = ("fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1")


def _encode_cases(seed):
    F = ref_float.FORMATS
    if seed is None:
        return [(0.265625, F["fp32"], "normal"), (-314.625, F["fp32"], "normal"), (0.3, F["fp8_e4m3"], "normal"),
                (1.0625, F["fp8_e4m3"], "tie"), (1000.0, F["fp8_e4m3"], "overflow"), (1e6, F["fp8_e5m2"], "overflow"),
                (0.001, F["fp8_e4m3"], "subnormal")]
    gen = np.random.default_rng(seed)
    cases = []
    for name in SMALL_FORMATS + ("fp16", "bf16"):
        fmt = F[name]
        codes = np.arange(2 ** fmt.total_bits) if fmt.total_bits <= 8 else gen.integers(0, 2 ** fmt.total_bits, 400)
        values = np.array([ref_float.decode_float(int(c), fmt) for c in codes])
        finite = np.sort(np.unique(values[np.isfinite(values)]))
        mids = (finite[:-1] + finite[1:]) / 2  # exact ties between neighbouring codes
        cases += [(float(v), fmt, "normal" if abs(v) >= fmt.min_normal else "subnormal") for v in finite]
        cases += [(float(v), fmt, "tie") for v in mids]
        cases += [(float(v), fmt, "normal") for v in gen.uniform(-fmt.max_value, fmt.max_value, 100)]
        cases += [(float(v), fmt, "subnormal") for v in gen.uniform(-fmt.min_normal, fmt.min_normal, 50)]
        top = fmt.max_value
        cases += [(s * v, fmt, "overflow") for s in (1, -1) for v in (top * 1.01, top * 4, 1e300, math.inf)]
        cases += [(-0.0, fmt, "negative zero")]
        if fmt.special != "finite":
            cases.append((math.nan, fmt, "nan"))
    return cases


_ENCODE_HINTS = {
    "tie": "a value exactly halfway between two codes goes to the one with an even mantissa (round half to even).",
    "normal": "find the exponent with frexp, scale |x| to an integer significand with M fraction bits, round it "
              "half to even, and carry into the next exponent when the rounded significand reaches 2^(M+1).",
    "subnormal": "below min_normal the exponent stays at 1 - bias and the hidden bit is 0 (subnormals): do not "
                 "flush these values to zero.",
    "overflow": "beyond max_value: 'ieee' formats give +-inf; 'fn' and 'finite' formats saturate to +-max_value.",
    "negative zero": "-0.0 keeps its sign bit.",
    "nan": "NaN encodes to the format's NaN code (any NaN code is accepted).",
}


def check_encode_float(encode_float, seed=None):
    """Task 4: a real number to the nearest code, round half to even."""
    task = "encode_float"
    cases = _encode_cases(seed)
    for x, fmt, kind in cases:
        expected = ref_float.encode_float(x, fmt)
        got = _as_int(_run(task, encode_float, x, fmt), "the code", task)
        if not 0 <= got < 2 ** fmt.total_bits:
            fail(f"{task}: a {fmt.name} code is an integer in [0, 2^{fmt.total_bits}), got {got}.")
        ok = got == expected or (kind == "nan" and math.isnan(ref_float.decode_float(got, fmt)))
        if not ok:
            hint = _ENCODE_HINTS[kind]
            v_got, v_exp = ref_float.decode_float(got, fmt), ref_float.decode_float(expected, fmt)
            if kind in ("normal", "tie", "subnormal") and math.isfinite(v_got) and abs(v_got) < abs(x) < abs(v_exp):
                hint = ("the significand was truncated (rounded toward zero): round to the nearest code, "
                        "ties to even (Python's round() of a float does this).")
            fail(with_hint(f"{task}({x!r}, {fmt.name}): expected {ref_float.bit_string(expected, fmt)!r} "
                           f"({ref_float.decode_float(expected, fmt)!r}), got {ref_float.bit_string(got, fmt)!r} "
                           f"({ref_float.decode_float(got, fmt)!r}).", hint)
                 if seed is None else hidden_case(f"encode_float in {fmt.name} on {kind} values", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 5: one MX block ----------------------------------------------------------------------

def check_mx_quantize(mx_quantize, seed=None):
    """Task 5: shared exponent and element codes of MX blocks with float elements."""
    task = "mx_quantize"
    gen = np.random.default_rng(2024 if seed is None else seed)
    elements = [ref_mx.MXFP8_E4M3, ref_mx.MXFP4_E2M1] if seed is None else [
        ref_mx.MXFP8_E4M3, ref_mx.MXFP8_E5M2, ref_mx.MXFP6_E2M3, ref_mx.MXFP6_E3M2, ref_mx.MXFP4_E2M1]
    n_blocks = 1 if seed is None else 20
    cases = []
    for element in elements:
        for b in range(n_blocks):
            x = gen.standard_normal(32) * 10.0 ** gen.uniform(-3, 3)
            if b % 4 == 1:
                x[int(gen.integers(0, 32))] *= 50  # one outlier sets the scale
            if b % 4 == 2:
                x = np.ldexp(np.round(x), int(gen.integers(-4, 4)))  # exact values, some ties after scaling
            cases.append((x, element))
    for x, element in cases:
        s_ref, codes_ref = ref_mx.mx_quantize(x, element)
        got = _run(task, mx_quantize, x.copy(), element)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(f"{task}: should return (shared_exponent, element_codes), got {type(got).__name__}.")
        s = as_integers(got[0], "shared_exponent", task).reshape(-1)
        codes = as_integers(got[1], "element_codes", task).reshape(-1)
        fmt = element.float_format
        if s.size != 1 or int(s[0]) != int(s_ref[0]):
            hint = ("shared exponent = floor(log2(max|x|)) - emax of the element format "
                    f"({fmt.name}: emax = {fmt.emax}); take floor(log2) exactly (math.frexp), not from a rounded log.")
            fail(with_hint(f"{task}(block, {element.name}): expected shared exponent {int(s_ref[0])}, "
                           f"got {s.tolist()}.", hint)
                 if seed is None else hidden_case(f"mx_quantize ({element.name}): the shared exponent differs", hint))
        if codes.shape != (32,) or not np.array_equal(codes, codes_ref.reshape(-1)):
            hint = ("each element is encode_float(x / 2^s, element format), saturated to +-max_value of the "
                    "element format (MX never produces inf).")
            fail(with_hint(f"{task}(block, {element.name}): the element codes differ from the expected "
                           f"{codes_ref.tolist()} (got {codes.tolist()}).", hint)
                 if seed is None else hidden_case(f"mx_quantize ({element.name}): element codes differ", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Questions 2 to 4 and Task 6: reasoning about formats and their cost -------------------------------

def check_format_for_gradients(answer):
    """Question 2: magnitudes from 1e-6 to 1e5 within 1% relative error, no scale: BF16 is the smallest format."""
    check_choice("Question 2", answer, "b", choices="abcde", hints={
        "a": "Compare FP16's largest finite value (FP16.max_value) with 1e5, and its smallest normal value with 1e-6: "
             "what happens to a value above the largest one, and to the relative error of a subnormal?",
        "c": "E4M3 has 3 mantissa bits: round to nearest leaves a relative error up to about 2^-4. Compare that with "
             "1%, and its largest value with 1e5.",
        "d": "E5M2 has the range of FP16 with 2 mantissa bits: compare its relative error (up to about 2^-3) with 1%, "
             "and its largest finite value with 1e5.",
        "e": "With one scale for the whole tensor the 8-bit grid is 127 equal steps up to the largest value: how "
             "many steps is a value 1e11 times smaller than the largest?",
    })


#: Task 6: every magnitude from 0.01 to 200 (the grader measures 20001 of them, evenly spaced in log scale).
DESIGN_RANGE = (0.01, 200.0)
#: Task 6's configuration: key -> allowed values (sign bit + exponent_bits + mantissa_bits = 8).
DESIGN_FIELDS = {
    "exponent_bits": Field(int, choices=(1, 2, 3, 4, 5, 6, 7)),
    "mantissa_bits": Field(int, choices=(0, 1, 2, 3, 4, 5, 6)),
    "bias": Field(int, low=-100, high=200),
    "special": Field(str, choices=("ieee", "fn", "finite")),
}
#: The reference design (E4M3 with bias 8, "fn" or "finite") reaches 0.0588; OFP8's E4M3 (bias 7) 0.0907,
#: its E5M2 0.111. No 8-bit float does better than 2^-4 / (1 + 2^-4) over 15 binades.
DESIGN_TIERS = [
    Tier(1.0, "largest relative error at most 0.0625 (2^-4) over [0.01, 200]", lambda m: m["error"] <= 0.0625),
    Tier(2 / 3, "largest relative error at most 0.10", lambda m: m["error"] <= 0.10),
    Tier(1 / 3, "largest relative error at most 0.125 (2^-3)", lambda m: m["error"] <= 0.125),
]


@measured_once
def design_measures(design: dict) -> dict:
    """The format of ``design`` and its largest relative rounding error over :data:`DESIGN_RANGE`.

    Round to nearest with qlib's reference codec (ties to even, the format's overflow rule: an
    ``"ieee"`` format overflows to infinity, whose relative error is infinite). ``ValueError``
    (from qlib) names what the configuration gets wrong.
    """
    fmt = ref_float.FloatFormat("design", design["exponent_bits"], design["mantissa_bits"], design["bias"],
                                design["special"])
    xs = np.geomspace(*DESIGN_RANGE, 20001)
    x_hat = ref_float.decode_floats(ref_float.encode_floats(xs, fmt), fmt)
    relative = np.abs(x_hat - xs) / xs
    worst = int(np.argmax(relative))
    return {"format": fmt, "error": float(relative[worst]), "at": float(xs[worst])}


def check_fp8_design(design):
    """Task 6: the grader builds the student's 8-bit float format and measures it with qlib's codec, in tiers."""
    task = "Task 6"
    design = config_of(task, design, DESIGN_FIELDS, what="format")
    if design["exponent_bits"] + design["mantissa_bits"] != 7:
        fail(f"{task}: 1 sign bit + {design['exponent_bits']} exponent bits + {design['mantissa_bits']} mantissa bits "
             f"is {1 + design['exponent_bits'] + design['mantissa_bits']} bits; an 8-bit float needs "
             "exponent_bits + mantissa_bits = 7.")
    return measured_design(task, design, design_measures, DESIGN_TIERS, report=_design_report)


def _design_report(measured: dict) -> str:
    fmt = measured["format"]
    return (f"E{fmt.exponent_bits}M{fmt.mantissa_bits}, bias {fmt.bias}, {fmt.special!r}: largest finite value "
            f"{fmt.max_value:g}, smallest normal {fmt.min_normal:g}; largest relative error {measured['error']:.4f} "
            f"(at |x| = {measured['at']:.4g})")


#: Question 3: energy of one operation (qlib.cost.ENERGY_45NM, Horowitz 2014, 45 nm), in pJ.
def _energy(name: str) -> float:
    from qlib.cost import ENERGY_45NM

    return ENERGY_45NM[name].value


def check_fp32_over_int8_energy(answer):
    """Question 3: weights in SRAM, one multiply-add per weight: FP32 costs (5 + 3.7 + 0.9) / (5/4 + 0.2 + 0.03)."""
    read, read8 = _energy("sram_read_32bit"), _energy("sram_read_32bit") * 8 / 32
    mac32, mac8 = _energy("fp32_mult") + _energy("fp32_add"), _energy("int8_mult") + _energy("int8_add")
    check_number("Question 3", answer, (read + mac32) / (read8 + mac8), rel_tol=0.01, mistakes=[
        (mac32 / mac8, "That compares the arithmetic only: every weight is also read from the SRAM once."),
        (read / read8, "That compares the memory reads only: every weight also takes a multiply and an add."),
        ((read + mac32) / (read + mac8), "One 32-bit read brings four INT8 weights: count the read energy per "
                                         "weight, not per read."),
        ((read + _energy("fp32_mult")) / (read8 + _energy("int8_mult")),
         "A multiply-add is a multiplication and an addition: count both."),
        ((read + mac32) / (read8 + _energy("int8_mult") + _energy("int32_add")),
         "The question counts the add in the weights' format, an 8-bit add, as the chapter does."),
        ((read8 + mac8) / (read + mac32), "The question asks how many times more FP32 costs: FP32 over INT8, a "
                                          "number above 1."),
        ((read + mac32) / (read * 8 + mac8), "An INT8 weight is 8 bits (one byte), a quarter of a 32-bit read, "
                                             "not 8 bytes."),
    ], hint="Per weight: the energy of reading its bits from SRAM plus one multiplication and one addition, in "
            "FP32 and in INT8; then divide.")


def check_tokens_per_second_bound(answer):
    """Question 4: 3e9 weights in MXFP4 (4 + 8/32 bits) at 60 GB/s: at most bandwidth / bytes tokens per second."""
    from qlib.cost import tokens_per_second_upper_bound

    n, bandwidth = 3e9, 60e9
    check_number("Question 4", answer, tokens_per_second_upper_bound(n, 4 + 8 / 32, bandwidth), rel_tol=0.01,
                 unit="tokens per second", mistakes=[
        (bandwidth / (n * 4 / 8), "MXFP4 stores more than its 4-bit elements: each block of 32 also stores its "
                                  "8-bit scale."),
        (bandwidth / (n * (4 + 8) / 8), "The 8-bit scale is shared by a block of 32 elements: it adds 8/32 of a "
                                        "bit per weight, not 8."),
        (bandwidth / (n * (4 + 32 / 32) / 8), "An MX scale is an 8-bit E8M0 code, not a 32-bit float."),
        (bandwidth / (n * 4.25), "The bandwidth is in bytes per second: divide the bits of the weights by 8 to get "
                                 "their bytes."),
        (bandwidth * 8 / (n * 4.25 / 8), "The bandwidth is already in bytes per second (1 GB = 10^9 bytes): "
                                         "compare it with the bytes of the weights."),
        (bandwidth / (n * 2), "MXFP4 weights are not 16 bits: count 4-bit elements and the share of the scales."),
    ], hint="Generating one token reads every weight once: divide the bandwidth (bytes per second) by the bytes of "
            "the weights, N * bits per weight / 8.")
