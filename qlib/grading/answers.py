"""Checks of answers that are not functions: a choice, a number, a configuration, and partial credit.

A lab's reasoning questions are answered in code cells (``q1_answer = "b"``, ``bits_needed = 12``,
``config = {"fc1": 4, ...}``) and checked here, in the grader, like every other answer:

* :func:`answer_of` reads the value a notebook gave a name, as data (:mod:`qlib.grading.wire`);
  nothing the notebook defines runs in the grader;
* :func:`check_choice` grades a multiple-choice answer: one letter, case and brackets ignored.
  An answer that names several letters ("abcd", ["a", "b"]) is not an answer and earns nothing;
* :func:`check_number` grades a number within a stated tolerance; a wrong value that matches a
  known mistake gets that mistake's hint (options for a whole number and for a fraction);
* :func:`config_of` checks a configuration (a dict) against its :class:`Field` s, so a design task
  can rebuild the model from it with qlib's references and measure it itself;
* :func:`measured_once`: a design's measurement, computed once per distinct design in a grading
  process (it is deterministic, and most of a class submits a few designs);
* :func:`measured_design`: a design task graded the one way they all are: the grader measures the
  checked design itself (once), refuses one over the task's limit, and grades it in tiers;
* :class:`Credit` and :func:`tiered`: partial credit. A check that returns ``Credit(f)`` as its test
  cell's last expression earns the fraction ``f`` of the cell's points (the sealed grader turns it
  into nbgrader's partial-credit output, :func:`credit_output`).

Messages never reveal the correct choice or value: they say what kind of mistake the answer looks like.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy
import torch

from qlib.grading import wire
from qlib.grading.harness import fail, run_submission


def value_of(x):
    """The identity: the value the kernel sends back when the grader reads a name (see :func:`answer_of`)."""
    return x


def answer_of(task: str, answer):
    """The value of a notebook's name, as data.

    In the grader ``answer`` stands for the name in the student's kernel; the value comes back as
    data only. Run where the notebook runs (a student checking their own work), the value goes
    through the same encoding, so both see the same thing.
    """
    if type(answer).__name__ == "StudentObject":
        return run_submission(task, value_of, answer, seconds=10.0)
    return wire.decode(wire.encode(answer))


# --- multiple choice ---------------------------------------------------------------------------------

def _letter(task: str, value, choices: str) -> str:
    listed = ", ".join(f'"{c}"' for c in choices)
    how = f"Answer with one of {listed} as a string, for example `= \"{choices[0]}\"`."
    if not isinstance(value, str):
        fail(f"{task}: the answer is a {type(value).__name__}, not a letter. {how}")
    letter = value.strip().strip("().").strip().lower()
    if letter == "":
        fail(f"{task}: no answer yet. {how}")
    if len(letter) != 1 or letter not in choices:
        fail(f"{task}: {value!r} is not one of the choices. {how}")
    return letter


def check_choice(task: str, answer, correct: str, choices: str = "abcd",
                 hints: Mapping[str, str] | None = None) -> None:
    """Grade a multiple-choice answer: exactly one letter of ``choices``, equal to ``correct``.

    ``hints`` maps a wrong letter to what choosing it suggests about the student's reasoning.
    """
    letter = _letter(task, answer_of(task, answer), choices)
    if letter != correct:
        hint = (hints or {}).get(letter, "Reread the question and the section of the chapter it refers to.")
        fail(f"{task}: ({letter}) is not right. {hint}")
    print(f"{task}: correct")


# --- a number ----------------------------------------------------------------------------------------

def _number(task: str, value, unit: str, what: str = "number") -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, numpy.ndarray) and value.size == 1:
        value = value.reshape(()).tolist()
    elif isinstance(value, numpy.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{task}: the answer is a {type(value).__name__}; give one {what}{f' (in {unit})' if unit else ''}.")
    if not math.isfinite(value):
        fail(f"{task}: the answer is {value}; give a finite {what}.")
    return float(value)


def check_number(task: str, answer, expected: float, rel_tol: float = 1e-3, abs_tol: float = 0.0,
                 mistakes: Sequence[tuple[float, str]] = (), unit: str = "",
                 hint: str = "Recompute it step by step, as the chapter does.", whole: bool = False,
                 fraction: bool = False) -> None:
    """Grade a number: within ``rel_tol`` (relative) or ``abs_tol`` (absolute) of ``expected``.

    ``mistakes``: ``(value, hint)`` pairs of wrong answers that a known mistake gives (matched
    with the same tolerance); any other wrong value gets ``hint``.

    ``whole``: the answer is a whole number (an m0, a bias, a count). A whole answer also matches a
    mistake whose value it rounds (a student rounds a wrong real value before answering), and a
    wrong answer that is not whole is told so. ``fraction``: the answer is a fraction in [0, 1]; a
    value in (1, 100] is refused first, as a percentage.
    """
    value = _number(task, answer_of(task, answer), unit, "whole number" if whole else "number")
    if fraction and 1 < value <= 100:
        fail(f"{task}: {_shown(value)} is not right. Give a fraction between 0 and 1, not a percentage.")
    if math.isclose(value, expected, rel_tol=rel_tol, abs_tol=abs_tol):
        print(f"{task}: correct")
        return
    for wrong, why in mistakes:
        if math.isclose(value, wrong, rel_tol=rel_tol, abs_tol=abs_tol) or whole and value == round(wrong):
            fail(f"{task}: {_shown(value)} is not right. {why}")
    if whole and not value.is_integer():
        fail(f"{task}: {_shown(value)} is not a whole number. {hint}")
    fail(f"{task}: {_shown(value)} is not right. {hint}")


def _shown(value: float) -> str:
    """A number as written: whole in full (1374389535), from 1e7 up to one decimal, else 7 significant digits."""
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 1e7 else f"{value:.7g}"


# --- a configuration ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One entry of a configuration: its allowed values (``choices``) or its type and range."""

    kind: type | tuple[type, ...] = int
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` for this field (None when it is fine)."""
        if self.choices:
            if any(type(value) is type(c) and value == c for c in self.choices):
                return None
            return f"must be one of {', '.join(map(repr, self.choices))}"
        if isinstance(value, bool) and bool not in _kinds(self.kind) or not isinstance(value, self.kind):
            return f"must be {' or '.join(k.__name__ for k in _kinds(self.kind))}, not {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            return f"must be between {self.low:g} and {self.high:g}"
        return None


def _kinds(kind) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def config_of(task: str, answer, fields: Mapping[str, Field], what: str = "configuration") -> dict:
    """The student's configuration (a dict), checked key by key against ``fields``.

    Every key of ``fields`` must be present, no other key, and each value must satisfy its field;
    the first problem found fails the task with a message naming the key.
    """
    config = answer_of(task, answer)
    if not isinstance(config, dict):
        fail(f"{task}: the {what} must be a dict with the keys {', '.join(map(repr, fields))}; "
             f"got a {type(config).__name__}.")
    unknown = [k for k in config if k not in fields]
    if unknown:
        fail(f"{task}: the {what} has keys the task does not ask for: {', '.join(map(repr, unknown[:5]))}. "
             f"Its keys are {', '.join(map(repr, fields))}.")
    missing = [k for k in fields if k not in config]
    if missing:
        fail(f"{task}: the {what} misses {', '.join(map(repr, missing))}.")
    for key, field in fields.items():
        problem = field.problem(config[key])
        if problem:
            fail(f"{task}: {what}[{key!r}] = {config[key]!r}: {problem}.")
    return dict(config)


def measured_once(measure: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """``measure(design)``, remembered for each distinct design (a checked configuration of plain data).

    A design's measurement is deterministic (fixed seeds, one thread), so grading the same design
    again gives the same numbers: it is computed once per grading process, and each caller gets its
    own copy. A measurement that raises is not remembered.
    """
    remembered: dict[str, dict] = {}

    @functools.wraps(measure)
    def once(design: dict) -> dict:
        key = json.dumps(design, sort_keys=True, default=repr)
        if key not in remembered:
            remembered[key] = measure(design)
        return copy.deepcopy(remembered[key])

    return once


# --- partial credit ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credit:
    """A fraction of a test cell's points, returned by a check as the cell's last expression."""

    fraction: float

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"a fraction of the points lies in [0, 1], got {self.fraction}")

    def __repr__(self):
        return f"partial credit: {self.fraction:.0%} of this task's points"


def credit_output(value, points: float):
    """nbgrader's partial-credit output for a test cell whose last expression is ``value`` (None: no output).

    nbgrader reads a test cell's ``execute_result`` holding one number as the points it earned.
    Only a :class:`Credit` below 1 produces one; anything else leaves nbgrader's rule (no error:
    full points) alone.
    """
    import nbformat

    if not isinstance(value, Credit) or value.fraction >= 1.0:
        return None
    earned = round(value.fraction * float(points), 6)
    return nbformat.v4.new_output("execute_result", data={"text/plain": f"{earned:g}"}, execution_count=None)


@dataclass(frozen=True)
class Tier:
    """A level of a design target: the ``fraction`` of the points earned when ``reached(measured)``."""

    fraction: float
    describe: str
    reached: Callable[[Mapping], bool]


def tiered(task: str, measured: Mapping, tiers: Sequence[Tier], report: str = "") -> Credit | None:
    """The credit of the highest tier that ``measured`` reaches (tiers are given best first).

    Prints ``report`` (what was measured) and the tier reached. The best tier earns full points
    (returns None: nothing to add); a lower one returns its :class:`Credit` and says what the next
    tier up needs; none fails the task.
    """
    if report:
        print(f"{task}: {report}")
    for rank, tier in enumerate(tiers):
        if tier.reached(measured):
            if rank == 0:
                print(f"{task}: {tier.describe}: full marks")
                return None
            print(f"{task}: {tier.describe}: {tier.fraction:.0%} of the points. "
                  f"For more: {tiers[rank - 1].describe}.")
            return Credit(tier.fraction)
    fail(f"{task}: the target is not reached. The lowest tier needs: {tiers[-1].describe}.")


# --- a design task -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limit:
    """A design task's cap or budget: ``measured[key]`` at most ``most``; ``over(measured)`` tells a design over it."""

    key: str
    most: float
    over: Callable[[dict], str]


def measured_design(task: str, design: dict, measure: Callable[[dict], dict], tiers: Sequence[Tier],
                    report: Callable[[dict], str], limit: Limit | None = None,
                    refused: str = "{error}.") -> Credit | None:
    """Grade a checked design (:func:`config_of`) the way every design task is graded: the grader measures it.

    ``measure(design)`` rebuilds and measures the design with qlib's references (wrap it in
    :func:`measured_once`); a ``ValueError`` from qlib, a design it cannot build, fails the task with
    ``refused`` (``{error}`` stands for qlib's message). A design over the task's ``limit`` fails with
    what ``limit.over`` says. Otherwise the design earns the credit of the highest of ``tiers`` it
    reaches (:func:`tiered`), with ``report(measured)``: what was measured.
    """
    try:
        measured = measure(design)
    except ValueError as error:
        fail(f"{task}: " + refused.format(error=error))
    if limit is not None and measured[limit.key] > limit.most:
        fail(f"{task}: {limit.over(measured)}")
    return tiered(task, measured, tiers, report=report(measured))
