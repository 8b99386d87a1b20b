"""The checks run in-process (as an instructor may run them): blocked references, stand-ins, limits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import qlib
from qlib import _reference
from qlib.grading import lab03
from qlib.grading.harness import GradingFailure, run_submission


def test_reference_is_unavailable_while_a_submission_runs():
    def cheat(x):
        return qlib.quantize(x, 0.5, 0, -8, 7)

    with pytest.raises(GradingFailure, match="reference answer"):
        run_submission("quantize", cheat, torch.zeros(3), blocked=lab03.REFERENCES)
    assert qlib.quantize(torch.tensor([1.0]), 0.5, 0, -8, 7).tolist() == [2]  # available again afterwards


def test_reference_captured_before_grading_is_still_blocked():
    captured = qlib.linear.quantize

    def cheat(x):
        return captured(x, 1.0, 0, -8, 7)

    with pytest.raises(GradingFailure, match="reference answer"):
        run_submission("quantize", cheat, torch.zeros(3), blocked=lab03.REFERENCES)


def test_infinite_loop_is_stopped():
    def loop():
        while True:
            pass

    with pytest.raises(GradingFailure, match="did not return within"):
        run_submission("quantize", loop, seconds=0.5)


def test_not_implemented_is_named():
    def stub():
        raise NotImplementedError()

    with pytest.raises(GradingFailure, match="not implemented yet"):
        run_submission("quantize", stub)


def test_earlier_tasks_are_replaced_by_correct_versions_and_restored():
    namespace = {"torch": torch}
    exec("def quantize(*a):\n    return 'wrong'\n"
         "def later(x):\n    return quantize(x, 1.0, 0, -8, 7)\n", namespace)
    got = run_submission("later", namespace["later"], torch.tensor([2.5]), blocked=lab03.REFERENCES,
                         stand_ins={"quantize": qlib.linear.quantize})
    assert got.tolist() == [2]
    assert namespace["quantize"]() == "wrong"


def test_grading_failure_prints_without_traceback():
    lines = GradingFailure("quantize: expected 1, got 2\nHint: round").  _render_traceback_()
    assert len(lines) == 2 and "Traceback" not in "".join(lines)


def test_visible_checks_pass_the_reference_and_fail_a_wrong_answer():
    lab03.check_quantize(lambda x, s, z, lo, hi: torch.clamp(torch.round(x / s) + z, lo, hi))
    with pytest.raises(GradingFailure, match="floor instead of round"):
        lab03.check_quantize(lambda x, s, z, lo, hi: torch.clamp(torch.floor(x / s) + z, lo, hi))
