"""qlib: the reference library of the neural-network quantization course.

Modules, one idea each, in layers. A module imports from its own layer, the layers listed before
it and the shared helpers, never from a layer after it: the numerics know nothing of tensor
quantizers, a quantizer nothing of models, and no library module depends on the grader. A
private name (``_x``) crosses from one module to another only out of the shared helpers (and a
few helpers shared by one family of modules, listed in ``tests/test_layers.py``, which reads the
layers from this docstring and checks both rules on every import). ``import qlib`` itself
re-exports the most used functions of layer 2 (:mod:`qlib.linear`, :mod:`qlib.granularity`).

Shared helpers, for every layer:

* :mod:`qlib._checks`: argument checks whose failures name the problem
* :mod:`qlib._reference`: the guard that lets the grader block a lab's reference answers (and
  the rule that qlib's own code calls their unguarded form)

Layer 1, numerics: numbers, formats, integer arithmetic and codes, no tensor quantizer:

* :mod:`qlib.integers`: unsigned, sign-magnitude and two's complement bit strings (chapter 1)
* :mod:`qlib.fixed_point`: <w, f> fixed point, rounding and saturation (chapter 1)
* :mod:`qlib.floating_point`: any binary float format, bit-exact encode/decode; FP32 ... FP4, E8M0 (chapter 1)
* :mod:`qlib.microscaling`: OCP MX blocks with a shared E8M0 scale (chapters 1 and 4)
* :mod:`qlib.cost`: energy per operation at 45 nm, model size, bandwidth bounds (chapter 1)
* :mod:`qlib.rounding`: rounding modes, named by their tie rule
* :mod:`qlib.huffman`: optimal canonical Huffman codes, packed encode/decode (chapter 2)
* :mod:`qlib.scale_storage`: the storage cost of scales and zero points in bits per weight (chapter 4)
* :mod:`qlib.integer_storage`: the bits an integer-only model stores: weights at their widths, int32 biases, multipliers and shifts (chapter 6, the capstone)
* :mod:`qlib.requantize`: fixed-point multiplier (M0, shift), gemmlowp/TFLite requantization (chapter 6)
* :mod:`qlib.shift_scaling`: N2D2 fixed-point, single- and double-shift scale approximations (chapter 6)

Layer 2, tensor quantizers: a tensor in, its quantized form (or an integer layer's output) out:

* :mod:`qlib.linear`: integer ranges, scale and zero point, quantize, dequantize (chapter 3)
* :mod:`qlib.granularity`: per-tensor, per-channel, per-group quantization and MX-style
  power-of-two integer blocks (chapters 3-4)
* :mod:`qlib.per_vector_scales`: two-level scales, integer per-vector scales under a float
  per-channel scale (VS-Quant, chapter 4)
* :mod:`qlib.stochastic_rounding`: stochastic rounding seeded through a torch.Generator (chapter 5)
* :mod:`qlib.integer_layers`: integer-only fully connected, convolution and pooling, read as their formulas (chapter 6)
* :mod:`qlib.integer_kernels`: the same layers' integers, fast: exact int8 GEMM and fused requantization (chapter 6)
* :mod:`qlib.ste`: fake quantization with the straight-through estimator (chapter 7)
* :mod:`qlib.lsq`: learned step size quantization, gradient scale and initial step (chapter 7)
* :mod:`qlib.pact`: PACT, a learned activation clipping value (chapter 7)
* :mod:`qlib.dorefa`: DoReFa-Net's tanh-normalised weights and clipped activations (chapter 7)
* :mod:`qlib.binary`: BinaryConnect sign, XNOR scaling, binary activations (chapter 8)
* :mod:`qlib.ternary`: ternary weight networks, threshold and scale (chapter 8)

Layer 3, observers and calibration: the range or clipping threshold that data calls for:

* :mod:`qlib.observers`: min-max, moving-average and per-channel range observers, one qparams formula (chapters 5-7)
* :mod:`qlib.calibration`: percentile, MSE-optimal and KL (TensorRT) clipping thresholds and their observers (chapter 5)
* :mod:`qlib.kl_search`: the KL threshold search for every candidate at once, from prefix sums (chapter 5)

Layer 4, models and model transforms: the digits data and models, and what changes a whole model:

* :mod:`qlib.data`: the digits data set with its fixed split
* :mod:`qlib.models`: the digits CNN and MLP with pretrained FP32 checkpoints
* :mod:`qlib.weights`: fake-quantizing a whole model's weights at any granularity; the
  accuracy-versus-bits sweep (chapters 3-4)
* :mod:`qlib.logarithmic`: power-of-two (logarithmic) levels, nearest in the linear domain;
  per-channel weights (chapter 3)
* :mod:`qlib.kmeans`: K-means (codebook) quantization and codebook fine-tuning (chapter 2)
* :mod:`qlib.pruning`: magnitude pruning, masks, sensitivity scans (chapter 2)
* :mod:`qlib.storage`: honest bit accounting of compressed layers and models (chapter 2)
* :mod:`qlib.folding`: batch-norm folding into the preceding convolution or linear layer (chapter 6)
* :mod:`qlib.integer_model`: the digits CNN as an integer-only model, its fake-quantized
  simulation, a float-tensor guard (chapter 6)
* :mod:`qlib.qat`: QAT layers with FP32 master weights, prepare_qat, conversion to the integer model (chapter 7)
* :mod:`qlib.sat`: SAT, scale-adjusted DoReFa weights and gradient-calibrated PACT (chapter 7)

Layer 5, pipelines: a chapter's experiment from the pretrained model to its table:

* :mod:`qlib.deep_compression`: prune, cluster, retrain, Huffman-code the digits CNN (chapter 2)
* :mod:`qlib.ptq`: static, dynamic and N2D2 post-training quantization of the digits models (chapter 5)
* :mod:`qlib.adaround`: AdaRound, learned up/down rounding layer by layer (chapter 5)
* :mod:`qlib.pytorch_flow`: PyTorch's eager-mode PTQ of the digits CNN (fbgemm) and fbgemm's
  float requantization (chapter 6)
* :mod:`qlib.qat_training`: seeded QAT fine-tuning and the PTQ/STE/LSQ table (chapter 7)
* :mod:`qlib.low_bit_training`: short fine-tuning with binary, ternary or low-bit weights and
  FP32 latent weights (chapter 8)
* :mod:`qlib.mixed_precision`: per-layer sensitivity and bit allocation under a size budget (chapter 8)

Layer 6, grading and the book:

* :mod:`qlib.grading`: checks that the labs' test cells call (every module of the package)
* :mod:`qlib.pages`: the chapters' hidden set-up: figure style, tables, numbers glued into the text
"""
from qlib.granularity import (
    dequantize_per_channel,
    dequantize_per_group,
    fake_quantize_tensor,
    quantize_per_channel,
    quantize_per_group,
)
from qlib.linear import (
    asymmetric_qparams,
    dequantize,
    fake_quantize,
    integer_range,
    quantize,
    symmetric_qparams,
)

__all__ = [
    "asymmetric_qparams", "dequantize", "dequantize_per_channel", "dequantize_per_group",
    "fake_quantize", "fake_quantize_tensor", "integer_range", "quantize", "quantize_per_channel",
    "quantize_per_group", "symmetric_qparams",
]
