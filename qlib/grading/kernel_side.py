"""The part of grading that runs inside the sandboxed kernel: it only computes.

The grader sends requests over a Unix socket (:func:`serve_calls`); each is a
pickle the grader made itself: a function, its arguments, the names of the
student's objects to look up, the references to block and the stand-ins for
earlier tasks. :func:`call` looks the student's objects up in the notebook's
namespace, makes the call, and the outcome goes back as data
(:mod:`qlib.grading.wire`):

* ``{"status": "returned", "value": ..., "after": ...}``; ``after`` holds the
  tensors, arrays and models among the arguments as they are after the call,
  so that the grader can see whether the function changed its inputs;
* ``{"status": "raised", "types": [the exception's class names], "message": ...}``;
* ``{"status": "missing", "name": ...}`` when the notebook defines no such object.

Nothing here decides a grade. A notebook can replace any of it; all it can
change is the data it sends back, which the grader checks like any answer.
"""
from __future__ import annotations

import pickle
from contextlib import contextmanager
from dataclasses import dataclass

@dataclass(frozen=True)
class StudentRef:
    """An object of the notebook, by name and attribute path (``FakeQuantSTE.apply``)."""

    name: str
    path: tuple = ()


class _Missing(Exception):
    pass


def _lookup(ref: StudentRef, namespace: dict):
    if ref.name not in namespace:
        raise _Missing(ref.name)
    value = namespace[ref.name]
    for attr in ref.path:
        value = getattr(value, attr)
    return value


def map_leaves(fn, value):
    """``value`` with ``fn`` applied to everything that is not a tuple, list or dict (rebuilt around it)."""
    if isinstance(value, tuple):
        return tuple(map_leaves(fn, v) for v in value)
    if isinstance(value, list):
        return [map_leaves(fn, v) for v in value]
    if isinstance(value, dict):
        return {k: map_leaves(fn, v) for k, v in value.items()}
    return fn(value)


def _resolve(value, namespace: dict):
    return map_leaves(lambda v: _lookup(v, namespace) if isinstance(v, StudentRef) else v, value)


def _stand_in(name: str, reference):
    """A correct version of an earlier task's function, with the reference unblocked while it runs."""
    from qlib import _reference

    def stand_in(*args, **kwargs):
        with _reference.allowed(_reference.blocked_names()):
            return reference(*args, **kwargs)

    stand_in.__name__ = name
    return stand_in


@contextmanager
def _stand_ins_installed(namespace: dict, stand_ins: dict):
    missing = object()
    saved = {name: namespace.get(name, missing) for name in stand_ins}
    namespace.update({name: _stand_in(name, ref) for name, ref in stand_ins.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                namespace.pop(name, None)
            else:
                namespace[name] = value


def _state_after(value):
    """The tensors, arrays and models in ``value`` (None elsewhere), to report changes to inputs."""
    import numpy
    import torch

    if isinstance(value, (torch.Tensor, numpy.ndarray, torch.nn.Module)):
        return value
    if isinstance(value, (tuple, list)):
        return [_state_after(v) for v in value]
    if isinstance(value, dict):
        return {k: _state_after(v) for k, v in value.items() if isinstance(k, str)}
    return None


def _message(err: BaseException) -> str:
    try:
        return str(err)[:4000]
    except BaseException:  # noqa: BLE001 (a broken __str__ is the submission's problem)
        return "(the error message could not be shown)"


def call(request: dict, namespace: dict) -> dict:
    """Carry out one request in ``namespace``; the outcome as a dict of data."""
    from qlib import _reference

    try:
        fn = _resolve(request["fn"], namespace)
        args = _resolve(request["args"], namespace)
        kwargs = _resolve(request["kwargs"], namespace)
    except _Missing as missing:
        return {"status": "missing", "name": str(missing)}
    except BaseException as err:  # noqa: BLE001
        return {"status": "raised", "types": [c.__name__ for c in type(err).__mro__], "message": _message(err)}
    try:
        with _reference.blocked(request["blocked"]), _stand_ins_installed(namespace, request["stand_ins"]):
            value = fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 (SystemExit and friends are the submission's answer too)
        return {"status": "raised", "types": [c.__name__ for c in type(err).__mro__], "message": _message(err)}
    return {"status": "returned", "value": value, "after": _state_after([list(args), kwargs])}


def _outcome_bytes(outcome: dict) -> bytes:
    from qlib.grading import wire

    try:
        return wire.encode(outcome)
    except BaseException as err:  # noqa: BLE001 (for example a tensor subclass that refuses to convert)
        return wire.encode({"status": "unreadable", "message": f"{type(err).__name__}: {_message(err)}"})


def _read_exactly(sock, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def serve_calls(socket_path: str) -> None:
    """Answer the grader's requests on a Unix socket until it sends an empty one.

    Each frame is an 8-byte big-endian length and that many bytes: a pickled
    request from the grader, an encoded outcome back.
    """
    import socket

    from IPython import get_ipython

    namespace = get_ipython().user_ns
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        while True:
            size = int.from_bytes(_read_exactly(sock, 8), "big")
            if size == 0:
                return
            outcome = call(pickle.loads(_read_exactly(sock, size)), namespace)
            data = _outcome_bytes(outcome)
            sock.sendall(len(data).to_bytes(8, "big") + data)
