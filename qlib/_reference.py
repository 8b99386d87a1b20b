"""Lets the lab grader make qlib's reference answers unavailable to a student.

Every qlib function that a lab asks students to write is decorated with
:func:`reference`. While the grader runs a student's function it blocks the
names of that lab's references (the ``REFERENCES`` of each
``qlib.grading.labNN`` module), so a submission that calls the reference
instead of implementing it fails with a message that says why.

The one rule: **inside qlib, call the unguarded form**, ``quantize.unguarded(...)``,
never the guarded ``quantize(...)``. The guarded name is for a reader's or a
student's own call. Why: while a submission runs, the grader blocks the lab's
references, and the submission may call what the lab hands out as tools (its
set-up helpers: ``qlib.weights``' sweep, ``qlib.ptq``, the integer model of
``qlib.integer_model``, ``qlib.mixed_precision.fake_quantize_any_width`` ...),
which use those same references inside. The block is there to stop a student
from calling the answer, not to break the tools; so no qlib code may depend on
a guarded name, and then no block can reach it. The grader's own process
computes the expected answers with the guarded names, outside any block.
``tests/test_reference_guard.py`` checks the rule statically (no qlib module
loads a guarded name except as ``name.unguarded``) and by running the labs'
set-up code and qlib's pipelines with every reference blocked at once.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager


class ReferenceUnavailable(RuntimeError):
    """Raised when a blocked qlib reference is called while a submission is graded."""


_blocked: set[str] = set()
_references: dict[str, object] = {}  # block name -> guarded function, filled as modules are imported


def refuse_if_blocked(name: str) -> None:
    """Raise ``ReferenceUnavailable`` if ``name`` is blocked right now."""
    if name in _blocked:
        raise ReferenceUnavailable(
            f"qlib.{name} is the reference answer and cannot be used while your work is graded: "
            "write this step yourself (your own functions from earlier tasks are fine)."
        )


def reference(name_or_function):
    """Mark a function as a lab's reference answer: ``@reference`` or ``@reference("block name")``.

    The decorated function refuses to run while its name (the function's own name unless given)
    is blocked. It keeps the original's name, signature and docstring (``functools.wraps``), and
    carries the original as ``.unguarded``: what qlib's own code calls (see the module docstring).
    """
    def decorate(function, name: str):
        earlier = _references.get(name)
        if earlier is not None and (earlier.__module__, earlier.__qualname__) != (function.__module__,
                                                                                  function.__qualname__):
            raise ValueError(f"two qlib references are named {name!r}: {earlier.__module__}.{earlier.__qualname__} "
                             f"and {function.__module__}.{function.__qualname__}")

        @functools.wraps(function)
        def guarded(*args, **kwargs):
            refuse_if_blocked(name)
            return function(*args, **kwargs)

        guarded.unguarded = function
        guarded.reference_name = name
        _references[name] = guarded
        return guarded

    if isinstance(name_or_function, str):
        return lambda function: decorate(function, name_or_function)
    return decorate(name_or_function, name_or_function.__name__)


def references() -> dict[str, object]:
    """Block name -> guarded function, for every reference of the qlib modules imported so far."""
    return dict(_references)


@contextmanager
def blocked(names):
    """Block the references ``names`` for the duration of the ``with`` block."""
    names = set(names)
    added = names - _blocked
    _blocked.update(added)
    try:
        yield
    finally:
        _blocked.difference_update(added)


@contextmanager
def allowed(names):
    """Lift the block on ``names`` inside the ``with`` block (the grader's stand-ins use it)."""
    lifted = set(names) & _blocked
    _blocked.difference_update(lifted)
    try:
        yield
    finally:
        _blocked.update(lifted)


def blocked_names() -> frozenset[str]:
    """The names blocked right now (the grader checks this set was not tampered with)."""
    return frozenset(_blocked)
