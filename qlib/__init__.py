"""qlib: the reference library of the neural-network quantization course.

Modules, one idea each:

* :mod:`qlib.integers`: unsigned, sign-magnitude and two's complement bit strings (chapter 1)
* :mod:`qlib.fixed_point`: <w, f> fixed point, rounding and saturation (chapter 1)
* :mod:`qlib.floating_point`: any binary float format, bit-exact encode/decode; FP32 ... FP4, E8M0 (chapter 1)
* :mod:`qlib.microscaling`: OCP MX blocks with a shared E8M0 scale (chapters 1 and 4)
* :mod:`qlib.cost`: energy per operation at 45 nm, model size, bandwidth bounds (chapter 1)
* :mod:`qlib.kmeans`: K-means (codebook) quantization and codebook fine-tuning (chapter 2)
* :mod:`qlib.pruning`: magnitude pruning, masks, sensitivity scans (chapter 2)
* :mod:`qlib.huffman`: optimal canonical Huffman codes, packed encode/decode (chapter 2)
* :mod:`qlib.storage`: honest bit accounting of compressed layers and models (chapter 2)
* :mod:`qlib.deep_compression`: prune, cluster, retrain, Huffman-code the digits CNN (chapter 2)
* :mod:`qlib.linear`: integer ranges, scale and zero point, quantize, dequantize (chapter 3)
* :mod:`qlib.granularity`: per-tensor, per-channel and per-group quantization (chapters 3-4)
* :mod:`qlib.rounding`: rounding modes, named by their tie rule
* :mod:`qlib.data`: the digits data set with its fixed split
* :mod:`qlib.models`: the digits CNN and MLP with pretrained FP32 checkpoints
* :mod:`qlib.weights`: fake-quantizing the weights of a whole model
* :mod:`qlib.grading`: checks that the labs' test cells call
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
