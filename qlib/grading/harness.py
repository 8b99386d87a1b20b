"""The machinery every lab's checks share.

* :class:`GradingFailure`: a failed check, shown to the student as its message
  alone (what was checked, expected against got, a hint); never a traceback,
  so a hidden check never shows its code.
* :func:`run_submission`: call a student's function. When grading, the
  function is a :class:`~qlib.grading.remote.StudentObject`: the call runs in
  the student's sandboxed kernel and only its result (data) comes back, to be
  compared here, in the grader's process. Called with a plain function (an
  instructor trying a check in a notebook), it runs in-process.
* :func:`call_catching`: a call whose exception is part of the answer
  ("raise ValueError when ...").
* :func:`as_array` and friends: whatever a student returns, as numpy arrays.
"""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

import numpy
import torch

from qlib import _reference
from qlib.grading import wire


class GradingFailure(AssertionError):
    """A check that failed, printed as its message only."""

    def _render_traceback_(self):  # IPython prints these lines instead of a traceback
        return [f"\x1b[0;31mGradingFailure\x1b[0m: {line}" if i == 0 else line
                for i, line in enumerate(str(self).splitlines())]


def fail(message: str) -> None:
    """Stop the check with ``message`` (what was checked, expected vs got, a hint)."""
    raise GradingFailure(message)


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


@contextmanager
def time_limit(seconds: float, what: str = "this cell"):
    """Stop ``what`` with a clear error if it runs longer than ``seconds`` (for the labs' ungraded cells).

    A convenience inside the student's kernel; when grading, the grader enforces its own limits from outside.
    """
    try:
        with _time_limit(seconds):
            yield
    except _TimeLimit:
        fail(f"{what} did not finish within {seconds:g} s; one of your functions may loop forever.")


def call_catching(fn, *args, **kwargs):
    """``("returned", value)`` or ``("raised", [exception class names], message)``: for checks of errors."""
    try:
        return ("returned", fn(*args, **kwargs))
    except (NotImplementedError, _reference.ReferenceUnavailable):
        raise
    except Exception as err:  # noqa: BLE001 (reported to the student)
        return ("raised", [c.__name__ for c in type(err).__mro__], str(err)[:2000])


def _raised(task: str, types: list[str], message: str) -> None:
    if "ReferenceUnavailable" in types:
        fail(f"{task}: {message}")
    if "NotImplementedError" in types:
        fail(f"{task}: not implemented yet (the function still raises NotImplementedError).")
    fail(f"{task}: your function raised {types[0] if types else 'an error'}: {message}")


def _run_in_kernel(task, session, fn, args, kwargs, blocked, stand_ins, seconds):
    from qlib.grading import remote

    try:
        return session.call(fn, args, kwargs, blocked=blocked, stand_ins=stand_ins, seconds=seconds)
    except remote.SubmissionMissing as err:
        fail(f"{task}: the notebook defines no `{err.name}`. Run the cell that defines it, and keep the name "
             "the task asks for.")
    except remote.SubmissionTimedOut as err:
        if err.budget:
            fail(f"{task}: the checks of this task ran out of time: your function did not return within the time "
                 "the test cell has for all its cases. It is far too slow (each call should take well under a "
                 "second); look for a loop that never ends or needless work.")
        fail(f"{task}: your function did not return within {seconds:g} s. Look for a loop that never ends.")
    except remote.SubmissionDied:
        fail(f"{task}: the kernel stopped while your function ran (it exited, crashed or ran out of memory). "
             "The rest of the notebook was graded in a fresh kernel.")
    except remote.SubmissionRaised as err:
        _raised(task, err.types, err.message)
    except remote.SubmissionUnreadable as err:
        fail(f"{task}: the result of your function could not be read back ({err}). Return numbers, tensors, "
             "arrays, tuples, lists or dicts of them, as the task asks.")


def _run_here(task, fn, args, kwargs, blocked, stand_ins, seconds):
    from qlib.grading.kernel_side import _stand_ins_installed

    namespace = getattr(fn, "__globals__", None)
    try:
        with (_reference.blocked(blocked), _stand_ins_installed(namespace if namespace is not None else {},
                                                                stand_ins), _time_limit(seconds)):
            return fn(*args, **kwargs)
    except _TimeLimit:
        fail(f"{task}: your function did not return within {seconds:g} s. Look for a loop that never ends.")
    except GradingFailure:
        raise
    except Exception as err:  # the student's own error, reported plainly
        _raised(task, [c.__name__ for c in type(err).__mro__], str(err))


def run_submission(task: str, fn, *args, blocked=(), stand_ins=None, seconds: float = 20.0, **kwargs):
    """Call the student's ``fn(*args, **kwargs)`` the way every check does.

    While it runs, the qlib references named in ``blocked`` raise
    ``ReferenceUnavailable`` (a courtesy: it tells a student who calls the
    reference why that earns nothing); the functions of earlier tasks named in
    ``stand_ins`` (name -> qlib reference) are replaced by correct versions, so
    a mistake in one task costs that task only; it must return within
    ``seconds``. Anything that goes wrong becomes a :class:`GradingFailure`
    that names the task.
    """
    remote = sys.modules.get("qlib.grading.remote")  # not loaded in a student's kernel: no StudentObject there
    session = remote.session_of(fn, args, kwargs) if remote is not None else None
    if session is not None:
        return _run_in_kernel(task, session, fn, args, kwargs, blocked, stand_ins or {}, seconds)
    if not callable(fn):
        fail(f"{task}: expected a function, got {type(fn).__name__}. Did you overwrite its name?")
    return _run_here(task, fn, args, kwargs, blocked, stand_ins or {}, seconds)


def as_array(value, what: str, task: str, nan_hint: str = "") -> numpy.ndarray:
    """``value`` (tensor, array, list or number) as a numpy array; fails with a clear message otherwise.

    ``nan_hint`` is added to the message when ``value`` holds NaN or infinity.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16 or value.dtype == torch.float16:
            value = value.float()
        value = value.numpy()
    if isinstance(value, wire.Unsupported):
        fail(f"{task}: {what} should be a number, a tensor or an array, got {value.type_name}.")
    try:
        arr = numpy.asarray(value)
    except Exception:
        fail(f"{task}: {what} should be a number, a tensor or an array, got {type(value).__name__}.")
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        fail(f"{task}: {what} should hold numbers, got {type(value).__name__} of {arr.dtype}.")
    if arr.dtype.kind == "f" and not bool(numpy.isfinite(arr).all()):
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
