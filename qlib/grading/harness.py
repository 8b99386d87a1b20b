"""The machinery every lab's test cells share.

* :class:`GradingFailure`: an ``AssertionError`` that Jupyter prints as its
  message alone (no traceback, so a hidden test never shows its code).
* :func:`run_submission`: call a student's function with qlib's reference
  answers blocked, under a time limit, and check that the notebook has not
  replaced the library functions the checks rely on.
* :func:`as_array`: turn whatever a student returns (tensor, array, list,
  number) into a float64 or int64 numpy array for comparison.

The comparison primitives are bound when this module is first imported (in
the lab's locked set-up cell, before any student code runs), so a notebook
that later replaces ``torch.equal`` or ``numpy.allclose`` changes nothing here;
it is reported instead.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy
import torch

from qlib import _reference

# Library functions a notebook might be tempted to replace; bound now, checked at every call.
_WATCHED = {
    "torch.equal": (torch, "equal"),
    "torch.allclose": (torch, "allclose"),
    "torch.isclose": (torch, "isclose"),
    "torch.round": (torch, "round"),
    "numpy.allclose": (numpy, "allclose"),
    "numpy.array_equal": (numpy, "array_equal"),
    "numpy.isclose": (numpy, "isclose"),
    "numpy.asarray": (numpy, "asarray"),
    "numpy.testing.assert_allclose": (numpy.testing, "assert_allclose"),
    "numpy.testing.assert_array_equal": (numpy.testing, "assert_array_equal"),
    "qlib._reference.refuse_if_blocked": (_reference, "refuse_if_blocked"),
    "qlib._reference.blocked": (_reference, "blocked"),
}
_ORIGINALS = {name: getattr(owner, attr) for name, (owner, attr) in _WATCHED.items()}
_BLOCKED_SET = _reference._blocked
_np_asarray = numpy.asarray
_np_isfinite = numpy.isfinite


class GradingFailure(AssertionError):
    """A check that failed, printed as its message only."""

    def _render_traceback_(self):  # IPython prints these lines instead of a traceback
        return [f"\x1b[0;31mGradingFailure\x1b[0m: {line}" if i == 0 else line
                for i, line in enumerate(str(self).splitlines())]


def fail(message: str) -> None:
    """Stop the check with ``message`` (what was checked, expected vs got, a hint)."""
    raise GradingFailure(message)


def replaced_functions() -> list[str]:
    """Names of watched library functions that no longer are the originals."""
    return [name for name, (owner, attr) in _WATCHED.items() if getattr(owner, attr, None) is not _ORIGINALS[name]]


def _check_untampered(task: str) -> None:
    replaced = replaced_functions()
    if replaced:
        fail(f"{task}: this notebook replaced {', '.join(replaced)}. The checks do not run on a patched "
             "library, so this task earns no points. Remove the assignment, restart the kernel and run all cells.")
    if _reference._blocked is not _BLOCKED_SET:
        fail(f"{task}: this notebook changed qlib's grading state; the task earns no points.")


class _TimeLimit(BaseException):
    """Raised inside the student's code when the time limit is reached (not catchable as Exception)."""


@contextmanager
def _time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise _TimeLimit()

    try:
        previous = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # not in the main thread: run without a limit
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stand_in(name: str, reference):
    """A correct version of an earlier task's function, for a later task's check to call."""
    def stand_in(*args, **kwargs):
        with _reference.allowed(_reference.blocked_names()):
            return reference(*args, **kwargs)

    stand_in.__name__ = name
    return stand_in


@contextmanager
def _earlier_tasks_replaced(fn, stand_ins: dict):
    """Inside the ``with``, the notebook's earlier-task functions are correct stand-ins.

    A later task is then graded on its own: a mistake in ``quantize`` costs the
    quantize task, not every task that calls ``quantize``.
    """
    namespace = getattr(fn, "__globals__", None)
    if not stand_ins or namespace is None:
        yield
        return
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


@contextmanager
def time_limit(seconds: float, what: str = "this cell"):
    """Stop ``what`` with a clear error if it runs longer than ``seconds`` (for ungraded cells too)."""
    try:
        with _time_limit(seconds):
            yield
    except _TimeLimit:
        fail(f"{what} did not finish within {seconds:g} s; one of your functions may loop forever.")


def run_submission(task: str, fn, *args, blocked=(), stand_ins=None, seconds: float = 20.0, **kwargs):
    """Call the student's ``fn(*args, **kwargs)`` the way every check does.

    While it runs, the qlib references named in ``blocked`` raise
    ``ReferenceUnavailable``; the functions of earlier tasks named in
    ``stand_ins`` (name -> qlib reference) are replaced by correct versions;
    it must return within ``seconds``. Any exception becomes a
    :class:`GradingFailure` that names the task and the error.
    """
    if not callable(fn):
        fail(f"{task}: expected a function, got {type(fn).__name__}. Did you overwrite its name?")
    _check_untampered(task)
    expected_blocked = frozenset(blocked) | _reference.blocked_names()
    try:
        with (_ORIGINALS["qlib._reference.blocked"](blocked), _earlier_tasks_replaced(fn, stand_ins or {}),
              _time_limit(seconds)):
            result = fn(*args, **kwargs)
            still_blocked = frozenset(_BLOCKED_SET)
    except _TimeLimit:
        fail(f"{task}: your function did not return within {seconds:g} s. Look for a loop that never ends.")
    except _reference.ReferenceUnavailable as err:
        fail(f"{task}: {err}")
    except NotImplementedError:
        fail(f"{task}: not implemented yet (the function still raises NotImplementedError).")
    except GradingFailure:
        raise
    except Exception as err:  # the student's own error, reported plainly
        fail(f"{task}: your function raised {type(err).__name__}: {err}")
    if still_blocked != expected_blocked or _reference._blocked is not _BLOCKED_SET:
        fail(f"{task}: your function changed qlib's grading state; the task earns no points.")
    _check_untampered(task)
    return result


def as_array(value, what: str, task: str, nan_hint: str = "") -> numpy.ndarray:
    """``value`` (tensor, array, list or number) as a numpy array; fails with a clear message otherwise.

    ``nan_hint`` is added to the message when ``value`` holds NaN or infinity.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16 or value.dtype == torch.float16:
            value = value.float()
        value = value.numpy()
    try:
        arr = _np_asarray(value)
    except Exception:
        fail(f"{task}: {what} should be a number, a tensor or an array, got {type(value).__name__}.")
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        fail(f"{task}: {what} should hold numbers, got {type(value).__name__} of {arr.dtype}.")
    if arr.dtype.kind == "f" and not bool(_np_isfinite(arr).all()):
        fail(f"{task}: {what} contains NaN or infinity." + (f" Hint: {nan_hint}" if nan_hint else ""))
    return arr


def as_integers(value, what: str, task: str) -> numpy.ndarray:
    """``value`` as an int64 array; floats are accepted when they hold whole numbers."""
    arr = as_array(value, what, task)
    if arr.dtype.kind == "f":
        if not bool((arr == numpy.round(arr)).all()):
            fail(f"{task}: {what} should hold whole numbers, got for example {arr[arr != numpy.round(arr)].flat[0]!r}.")
    return arr.astype(numpy.int64)


def as_pair(value, what: str, task: str) -> tuple:
    """Check that ``value`` is a pair (tuple or list of two) and return it."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        fail(f"{task}: {what} should return a pair (two values), got {type(value).__name__}"
             + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "") + ".")
    return tuple(value)


def check_shape(arr: numpy.ndarray, shape: tuple, what: str, task: str) -> None:
    """Fail unless ``arr`` has ``shape``."""
    if tuple(arr.shape) != tuple(shape):
        fail(f"{task}: {what} should have shape {tuple(shape)}, got {tuple(arr.shape)}.")


def fmt(value) -> str:
    """A short readable form of a number or small array for messages."""
    arr = numpy.asarray(value)
    if arr.ndim == 0:
        v = arr.item()
        return f"{v:.6g}" if isinstance(v, float) else str(v)
    return numpy.array2string(arr, precision=4, threshold=20, separator=", ")
