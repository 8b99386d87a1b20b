"""The skeleton every lab's checks share: how a student's function is run, and what a check reports.

A lab's module (``qlib/grading/labNN.py``) declares its own data and gets its runner here:

* ``REFERENCES``: the qlib functions the lab asks students to write, and those that would do the
  work for them; while a student's function runs they are unavailable (``ReferenceUnavailable``);
* ``EARLIER_TASKS``: task -> the names of the earlier tasks its function may call. While that task
  is checked, each of them is replaced by the correct version in ``STAND_INS`` (name -> function),
  so one mistake costs one task;
* ``_run = task_runner(REFERENCES, EARLIER_TASKS, STAND_INS)``: how every check calls the
  student's function (:func:`qlib.grading.harness.run_submission`, with that lab's blocked
  references and stand-ins).

Every check ends with :func:`passed`. A case that fails ends it with
``fail(with_hint(...) if seed is None else hidden_case(...))``: the call and its result for a visible
case (:func:`with_hint`), only the kind of input for a hidden one (:func:`hidden_case`, which begins
with :data:`HIDDEN`). The choice is written at the call, where the student edition can fold it.

A check whose answer is a rounded value accepts either neighbour where float arithmetic cannot
decide the tie: :func:`near_tie_but_not_exact` where an exact tie must still
follow the rounding rule, :func:`tie_or_near_tie` where it need not.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from qlib.grading.harness import run_submission

#: How every message about a hidden case begins (it names the kind of input and the likely mistake, never the input).
HIDDEN = "A hidden check failed"


def task_runner(references: tuple[str, ...], earlier_tasks: Mapping[str, tuple[str, ...]] | None = None,
                stand_ins: Mapping[str, Callable] | None = None) -> Callable:
    """The lab's ``_run(task, fn, *args, seconds=20.0, **kwargs)``: call the student's ``fn`` for ``task``.

    While ``fn`` runs, the qlib functions named in ``references`` are unavailable, and the earlier
    tasks that ``earlier_tasks[task]`` names are replaced by ``stand_ins[name]``; ``fn`` must return
    within ``seconds``.
    """
    references, earlier_tasks, stand_ins = tuple(references), dict(earlier_tasks or {}), dict(stand_ins or {})
    missing = sorted({name for names in earlier_tasks.values() for name in names} - set(stand_ins))
    if missing:
        raise ValueError(f"earlier tasks without a stand-in: {', '.join(missing)}")

    def run(task, fn, *args, seconds=20.0, **kwargs):
        replaced = {name: stand_ins[name] for name in earlier_tasks.get(task, ())}
        return run_submission(task, fn, *args, blocked=references, stand_ins=replaced, seconds=seconds, **kwargs)

    return run


def with_hint(text: str, hint: str) -> str:
    """The message of a visible case that fails: ``text`` (the call, what it should return and what it
    returned), then ``Hint: {hint}``, on a line of its own after a message of several lines."""
    return f"{text}{chr(10) if chr(10) in text else ' '}Hint: {hint}"


def hidden_case(kind: str, hint: str) -> str:
    """The message of a hidden case that fails: ``f"{HIDDEN} for {kind}. Hint: {hint}"``, the kind of
    input (never the input) and the hint."""
    return f"{HIDDEN} for {kind}. Hint: {hint}"


def passed(task: str, n_cases: int, hidden: bool) -> None:
    """Report that every case passed; hidden checks do not say how many cases they ran."""
    if hidden:
        print(f"{task}: hidden checks passed")
    else:
        print(f"{task}: {n_cases} visible case{'s' * (n_cases != 1)} passed")


def near_tie_but_not_exact(v) -> np.ndarray:
    """True where ``v`` is within float rounding of a tie (k + 1/2) but is not exactly one.

    There float32 and float64 arithmetic (or ``x / scale`` and ``x * (1 / scale)``) may round to
    different neighbours, and both are accepted; an exact tie must follow the rounding rule.
    Within float rounding: ``|v - floor(v) - 1/2| < 1e-6 * max(1, |v|)``.
    """
    v = np.asarray(v, dtype=np.float64)
    return (np.abs(v - np.floor(v) - 0.5) < 1e-6 * np.maximum(1.0, np.abs(v))) & (v != np.floor(v) + 0.5)


def tie_or_near_tie(v) -> np.ndarray:
    """True where ``v`` is a tie (k + 1/2) or within float rounding of one: both neighbours are accepted there.

    For answers whose tie rule the check does not grade (a student's forward pass may compute
    ``x / scale`` in another order). Within float rounding: ``|v - floor(v) - 1/2| < 1e-5 * max(1, |v|)``.
    """
    v = np.asarray(v, dtype=np.float64)
    return np.abs(v - np.floor(v) - 0.5) < 1e-5 * np.maximum(1.0, np.abs(v))
