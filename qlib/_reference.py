"""Lets the lab grader make qlib's reference answers unavailable to a student.

Every qlib function that a lab asks students to write begins with
``refuse_if_blocked("name")``. While the grader runs a student's function it
blocks those names, so a submission that calls the reference instead of
implementing it fails with a message that says why.
"""
from __future__ import annotations

from contextlib import contextmanager


class ReferenceUnavailable(RuntimeError):
    """Raised when a blocked qlib reference is called while a submission is graded."""


_blocked: set[str] = set()


def refuse_if_blocked(name: str) -> None:
    """Raise ``ReferenceUnavailable`` if ``name`` is blocked right now."""
    if name in _blocked:
        raise ReferenceUnavailable(
            f"qlib.{name} is the reference answer and cannot be used while your work is graded: "
            "write this step yourself (your own functions from earlier tasks are fine)."
        )


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
