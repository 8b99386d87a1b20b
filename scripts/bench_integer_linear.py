"""Time qlib's integer-only layers against PyTorch's quantized kernels (fbgemm) and FP32, in one run.

    python scripts/bench_integer_linear.py                  # 1024 x 1024 x 1024 and the digits CNN
    python scripts/bench_integer_linear.py --threads 2 --size 512
    python scripts/bench_integer_linear.py --runs 5         # five runs and the spread of the ratios

1. A fully connected layer, batch x in_features x out_features = size^3: uint8 activations
   with a zero point, symmetric int8 weights, int32 bias, uint8 output.
   qlib.integer_layers.quantized_linear (qlib.integer_kernels: torch._int_mm accumulation, gemmlowp requantization)
   against torch.ao.nn.quantized.Linear (fbgemm/x86: int32 accumulation, float requantization)
   and torch.nn.functional.linear in FP32, on the same numbers.
2. The digits CNN on the 360 test images: qlib's integer-only model (qlib.integer_model)
   against the same integers run by PyTorch's quantized modules, and the FP32 model.

Every candidate runs with the same torch.set_num_threads; times are the best of --repeats
after one warm-up run (scripts/timing.py). Prints the times, the ratios, and how often qlib and
PyTorch give the same integers; with --runs, the whole comparison is repeated and the smallest,
median and largest ratio of qlib to PyTorch's quantized kernels are printed at the end.
Not a test: timings depend on the machine, the ratios much less.
"""
from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F

from qlib.integer_layers import quantize_bias, quantized_linear
from qlib.requantize import quantize_multiplier, real_multiplier
from timing import best_of  # scripts/timing.py: running a script puts its folder on sys.path

warnings.filterwarnings("ignore", message=".*deprecat")  # torch.ao.quantization warns that it is deprecated


def report(title: str, t_qlib: float, t_torch: float, t_fp32: float, agree: str) -> float:
    """Print one comparison; returns qlib's time over PyTorch's quantized kernels' time."""
    print(title)
    print(f"  qlib integer-only        {t_qlib * 1e3:9.2f} ms")
    print(f"  PyTorch quantized ({torch.backends.quantized.engine:6s}) {t_torch * 1e3:7.2f} ms")
    print(f"  FP32                     {t_fp32 * 1e3:9.2f} ms")
    print(f"  qlib / PyTorch quantized {t_qlib / t_torch:9.2f}")
    print(f"  qlib / FP32              {t_qlib / t_fp32:9.2f}")
    print(f"  {agree}")
    return t_qlib / t_torch


def bench_linear(size: int, repeats: int) -> float:
    from torch.ao.nn.quantized import Linear as QuantizedLinear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, size, generator=g)
    w = torch.randn(size, size, generator=g) / size**0.5
    b = torch.randn(size, generator=g) * 0.1
    sx, zx = float(x.max() - x.min()) / 255, 128
    sw = float(w.abs().max()) / 127
    so, zo = 0.05, 128

    qx = torch.quantize_per_tensor(x, sx, zx, torch.quint8)
    qw = torch.quantize_per_tensor(w, sw, 0, torch.qint8)
    layer = QuantizedLinear(size, size)
    layer.set_weight_bias(qw, b)
    layer.scale, layer.zero_point = so, zo

    q_x, q_w = qx.int_repr(), qw.int_repr()                    # uint8 and int8 tensors
    q_b = quantize_bias(b, sx, sw)
    m0, shift = quantize_multiplier(real_multiplier(sx, sw, so))

    t_qlib, ours = best_of(repeats, lambda: quantized_linear(q_x, q_w, q_b, zx, m0, shift, zo, 0, 255))
    t_torch, theirs = best_of(repeats, lambda: layer(qx))
    xf, wf = qx.dequantize(), qw.dequantize()
    t_fp32, _ = best_of(repeats, lambda: F.linear(xf, wf, b))

    diff = (ours - theirs.int_repr().long()).abs()
    agree = (f"same integers as PyTorch: {float((diff == 0).float().mean()):.2%} of {diff.numel():,}, "
             f"largest difference {int(diff.max())}")
    return report(f"fully connected, {size} x {size} x {size} (uint8 x int8 -> uint8), best of {repeats}",
                  t_qlib, t_torch, t_fp32, agree)


def pytorch_quantized_digits(integer_model):
    """PyTorch's quantized modules holding the integer model's own weights, biases and qparams."""
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d, LinearReLU
    from torch.ao.nn.quantized import Conv2d, Linear

    modules = {}
    for layer in integer_model.layers:
        w = layer.q_weight.to(torch.float32) * layer.weight_scale.reshape((-1,) + (1,) * (layer.q_weight.ndim - 1))
        qw = torch.quantize_per_channel(w, layer.weight_scale.double(),
                                        torch.zeros(len(layer.weight_scale), dtype=torch.long), 0, torch.qint8)
        bias = (layer.q_bias.double() * real_multiplier(layer.input.scale, layer.weight_scale, 1.0)).float()
        c_out = layer.q_weight.shape[0]
        if layer.kind == "conv2d":
            cls = ConvReLU2d if layer.relu else Conv2d
            module = cls(layer.q_weight.shape[1], c_out, layer.q_weight.shape[2], stride=layer.stride,
                         padding=layer.padding)
        else:
            cls = LinearReLU if layer.relu else Linear
            module = cls(layer.q_weight.shape[1], c_out)
        module.set_weight_bias(qw, bias)
        module.scale, module.zero_point = layer.output.scale, layer.output.zero_point
        modules[layer.name] = module
    p = integer_model.input_qparams
    out_dtype = {0: torch.quint8}.get(p.qmin, torch.qint8)

    def forward(x):
        q = torch.quantize_per_tensor(x, p.scale, p.zero_point, out_dtype)
        q = modules["conv2"](modules["conv1"](q))
        q = F.max_pool2d(q, 2).flatten(1)
        return modules["fc2"](modules["fc1"](q))

    return forward


def bench_digits(repeats: int) -> float | None:
    try:
        from qlib.integer_model import convert_digits_cnn
    except ImportError:
        print("digits CNN: qlib.integer_model is not available, so the whole-model comparison is skipped")
        return None
    from qlib.data import load_digits
    from qlib.models import load_pretrained

    train, test = load_digits("train"), load_digits("test")
    fp32 = load_pretrained("cnn").eval()
    integer_model = convert_digits_cnn(fp32, train.images)
    if integer_model.input_qparams.qmin != 0:
        print("digits CNN: the comparison expects uint8 activations; skipped")
        return None
    pytorch_model = pytorch_quantized_digits(integer_model)
    x = test.images

    t_qlib, q_ours = best_of(repeats, lambda: integer_model.forward_integer(integer_model.quantize_input(x)))
    t_torch, q_theirs = best_of(repeats, lambda: pytorch_model(x))
    with torch.no_grad():
        t_fp32, logits = best_of(repeats, lambda: fp32(x))

    q_theirs = q_theirs.int_repr().long()
    same = float((q_ours.long() == q_theirs).float().mean())
    preds = float((q_ours.argmax(1) == q_theirs.argmax(1)).float().mean())
    acc = {name: float((p == test.labels).float().mean()) for name, p in
           (("qlib", q_ours.argmax(1)), ("PyTorch", q_theirs.argmax(1)), ("FP32", logits.argmax(1)))}
    agree = (f"same output integers as PyTorch: {same:.2%}, same predictions: {preds:.2%}; test accuracy "
             + ", ".join(f"{k} {v:.2%}" for k, v in acc.items()))
    return report(f"digits CNN, {len(x)} test images (uint8 activations, per-channel int8 weights), "
                  f"best of {repeats}", t_qlib, t_torch, t_fp32, agree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="batch = in_features = out_features")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every candidate")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole comparison, then print the spread")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in engines else engines[-1]
    print(f"torch {torch.__version__}, {args.threads} thread(s), quantized engine {torch.backends.quantized.engine}")
    ratios = {"fully connected": [], "digits CNN": []}
    for _ in range(args.runs):
        ratios["fully connected"].append(bench_linear(args.size, args.repeats))
        ratio = bench_digits(args.repeats)
        if ratio is not None:
            ratios["digits CNN"].append(ratio)
    if args.runs > 1:
        for name, values in ratios.items():
            if values:
                values = sorted(values)
                print(f"{name}: qlib / PyTorch quantized over {len(values)} runs: smallest {values[0]:.2f}, "
                      f"median {values[len(values) // 2]:.2f}, largest {values[-1]:.2f}")


if __name__ == "__main__":
    main()
