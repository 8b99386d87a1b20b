"""Results as data: what a sandboxed kernel may send back to the grader.

The grader never unpickles anything a submission produced. A kernel's answer
is encoded by :func:`encode` as JSON in which only these values appear:

* ``None``, ``bool``, ``int``, ``float`` (NaN and infinities included), ``str``;
* ``bytes``, ``tuple``, ``list``, ``dict`` (any keys of these kinds);
* numpy arrays and scalars and torch tensors of a numeric or boolean dtype
  (bfloat16 and float8 travel as float32, which holds them exactly);
* ``torch.dtype``, and a ``torch.nn.Module`` as its class name and state dict.

Anything else becomes :class:`Unsupported` (its type name), so a check can say
"expected a tensor, got Foo". :func:`decode` rebuilds the values with
``json.loads`` and ``numpy.frombuffer`` alone; malformed input, unknown tags,
oversized arrays and deep nesting raise :class:`MalformedResult`.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy

#: numpy dtypes that may cross; anything else is refused when decoding.
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")
MAX_DEPTH = 64
MAX_BYTES = 256 * 2**20


class MalformedResult(ValueError):
    """What the kernel sent back is not data this module produces."""


@dataclass(frozen=True)
class Unsupported:
    """Stands for a returned value that is not data (a function, a custom object, ...)."""

    type_name: str

    def __repr__(self):
        return f"<{self.type_name}>"


@dataclass
class ModuleState:
    """A returned ``torch.nn.Module``: its class name, its state dict and its training flag."""

    class_name: str
    state: dict
    training: bool


# --- encoding (runs in the kernel) -----------------------------------------------------------------

def _array(arr: numpy.ndarray, tag: str) -> dict:
    arr = numpy.array(arr, order="C", copy=True)  # (ascontiguousarray would make a 0-d array 1-d)
    return {tag: arr.dtype.name, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def _tensor(t) -> dict:
    import torch

    t = t.detach().cpu()
    if t.is_complex() or t.dtype in (torch.quint8, torch.qint8, torch.qint32):
        return {"__unsupported__": f"tensor of {t.dtype}"}
    if t.dtype not in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                       torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)  # bfloat16, float8: exactly representable in float32
    return _array(t.contiguous().numpy(), "__tensor__")


def _plain(value, depth: int):
    import torch

    if depth > MAX_DEPTH:
        return {"__unsupported__": "data nested too deeply"}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, torch.Tensor):
        return _tensor(value)
    if isinstance(value, numpy.ndarray):
        if value.dtype.name not in DTYPES:
            return {"__unsupported__": f"array of {value.dtype}"}
        return _array(value, "__ndarray__")
    if isinstance(value, numpy.generic) and value.dtype.name in DTYPES:
        return _array(numpy.asarray(value), "__npscalar__")
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.nn.Module):
        state = {k: _tensor(v) for k, v in value.state_dict().items()}
        return {"__module__": type(value).__name__, "state": state, "training": bool(value.training)}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {"__dict__": [[_plain(k, depth + 1), _plain(v, depth + 1)] for k, v in value.items()]}
    return {"__unsupported__": type(value).__name__}


def encode(value) -> bytes:
    """``value`` as JSON bytes (see the module docstring for what survives)."""
    return json.dumps(_plain(value, 0), separators=(",", ":")).encode()


# --- decoding (runs in the grader) ---------------------------------------------------------------

def _decode_array(node: dict, tag: str):
    dtype, shape, data = node.get(tag), node.get("shape"), node.get("data")
    if dtype not in DTYPES or not isinstance(shape, list) or not isinstance(data, str):
        raise MalformedResult(f"bad array header {dtype!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n for n in shape) or len(shape) > 32:
        raise MalformedResult("bad array shape")
    raw = base64.b64decode(data, validate=True)
    count = int(numpy.prod(shape, dtype=object))
    if count * numpy.dtype(dtype).itemsize != len(raw):
        raise MalformedResult("array data does not match its shape")
    return numpy.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _value(node, depth: int):
    import torch

    if depth > MAX_DEPTH:
        raise MalformedResult("nested too deeply")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_value(v, depth + 1) for v in node]
    if not isinstance(node, dict) or len(node) == 0:
        raise MalformedResult(f"unexpected {type(node).__name__}")
    if "__tuple__" in node and isinstance(node["__tuple__"], list):
        return tuple(_value(v, depth + 1) for v in node["__tuple__"])
    if "__dict__" in node and isinstance(node["__dict__"], list):
        out = {}
        for pair in node["__dict__"]:
            if not isinstance(pair, list) or len(pair) != 2:
                raise MalformedResult("bad dict item")
            key = _value(pair[0], depth + 1)
            if not isinstance(key, (type(None), bool, int, float, str, bytes, tuple)):
                raise MalformedResult("unhashable dict key")
            out[key] = _value(pair[1], depth + 1)
        return out
    if "__tensor__" in node:
        return torch.from_numpy(_decode_array(node, "__tensor__"))
    if "__ndarray__" in node:
        return _decode_array(node, "__ndarray__")
    if "__npscalar__" in node:
        return _decode_array(node, "__npscalar__")[()]
    if "__bytes__" in node and isinstance(node["__bytes__"], str):
        return base64.b64decode(node["__bytes__"], validate=True)
    if "__dtype__" in node:
        dtype = getattr(torch, str(node["__dtype__"]), None)
        if not isinstance(dtype, torch.dtype):
            raise MalformedResult("unknown dtype")
        return dtype
    if "__module__" in node:
        state = node.get("state")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise MalformedResult("bad module state")
        tensors = {k: _value(v, depth + 1) for k, v in state.items()}
        if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise MalformedResult("bad module state")
        return ModuleState(str(node["__module__"])[:200], tensors, bool(node.get("training")))
    if "__unsupported__" in node:
        return Unsupported(str(node["__unsupported__"])[:200])
    raise MalformedResult("unknown tag")


def decode(data: bytes):
    """The value that :func:`encode` turned into ``data``; :class:`MalformedResult` if it is not such data."""
    if len(data) > MAX_BYTES:
        raise MalformedResult(f"more than {MAX_BYTES >> 20} MiB of data")
    try:
        node = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise MalformedResult(f"not JSON: {type(err).__name__}") from None
    try:
        return _value(node, 0)
    except (ValueError, TypeError, RecursionError, OverflowError) as err:
        if isinstance(err, MalformedResult):
            raise
        raise MalformedResult(f"{type(err).__name__}") from None
