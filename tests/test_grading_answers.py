"""Checks of answers that are not functions (qlib.grading.answers), and partial credit in the sealed grader."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from nbgrader.utils import determine_grade

from qlib.grading import answers, sealed
from qlib.grading.answers import Credit, Field, Tier, check_choice, check_number, config_of, tiered
from qlib.grading.harness import GradingFailure


def failure(fn, *args, **kwargs) -> str:
    with pytest.raises(GradingFailure) as err:
        fn(*args, **kwargs)
    return str(err.value)


# --- multiple choice ------------------------------------------------------------------------------

@pytest.mark.parametrize("written", ["b", "B", " b ", "(b)", "b.", "(B)"])
def test_a_choice_written_any_usual_way_is_accepted(written, capsys):
    check_choice("Q1", written, "b")
    assert "Q1: correct" in capsys.readouterr().out


@pytest.mark.parametrize("every", ["abcd", "a, b, c, d", "ab", ["a", "b", "c", "d"], ("b",), {"b"}])
def test_naming_several_choices_is_not_an_answer(every):
    message = failure(check_choice, "Q1", every, "b")
    assert "Answer with one of" in message


def test_a_wrong_choice_gets_its_hint_and_never_the_right_letter():
    message = failure(check_choice, "Q1", "c", "b", hints={"c": "That is the rounding error, not the clipping error."})
    assert "(c) is not right" in message and "rounding error" in message
    assert "(b)" not in message and '"b"' not in message.split("not right")[1]


def test_an_unanswered_choice_says_so():
    assert "no answer yet" in failure(check_choice, "Q1", "", "b")
    assert "not a letter" in failure(check_choice, "Q1", None, "b")


# --- numbers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("written", [12, 12.0, np.int64(12), np.float32(12.005), torch.tensor(12.0),
                                     np.array([12.0]), torch.tensor([[12]])])
def test_a_number_in_any_numeric_type_is_accepted(written, capsys):
    check_number("Q2", written, 12, rel_tol=1e-3)
    assert "Q2: correct" in capsys.readouterr().out


def test_a_number_outside_the_tolerance_fails_with_the_hint_of_its_mistake():
    message = failure(check_number, "Q2", 11, 12, mistakes=[(11, "You floored where the chapter rounds.")])
    assert "11 is not right" in message and "floored" in message and "12" not in message.replace("11", "")
    assert "step by step" in failure(check_number, "Q2", 3, 12)


def test_a_wrong_number_is_shown_as_written():
    assert "1374389536 is not right" in failure(check_number, "Q2", 1374389536, 1374389535, rel_tol=0.0)
    assert "0.1234568 is not right" in failure(check_number, "Q2", 0.123456789, 1.0)


def test_the_absolute_tolerance_is_used_near_zero():
    check_number("Q2", 1e-9, 0.0, abs_tol=1e-6)
    assert "is not right" in failure(check_number, "Q2", 1e-3, 0.0, abs_tol=1e-6)


def test_a_whole_number_matches_a_mistake_it_rounds_and_is_told_when_it_is_not_whole(capsys):
    mistakes = [(2.4, "That is the bias as a real number."), (-4499.9999999, "The factor a is missing.")]
    for written in (-12000, -12000.0, np.int64(-12000), torch.tensor(-12000)):
        check_number("Q6", written, -12000, rel_tol=0.0, abs_tol=1e-6, mistakes=mistakes, whole=True)
    assert capsys.readouterr().out.count("Q6: correct") == 4
    assert "2 is not right. That is the bias as a real number" in failure(
        check_number, "Q6", 2, -12000, rel_tol=0.0, abs_tol=1e-6, mistakes=mistakes, whole=True)
    assert "-4500 is not right. The factor a" in failure(
        check_number, "Q6", -4500, -12000, rel_tol=0.0, abs_tol=1e-6, mistakes=mistakes, whole=True)
    assert "2 is not right. Recompute" in failure(check_number, "Q6", 2, -12000, rel_tol=0.0, mistakes=mistakes)
    assert "1374389535.4 is not a whole number" in failure(check_number, "Q1", 1374389535.4, 1374389535,
                                                           rel_tol=0.0, abs_tol=1e-6, whole=True)
    assert "give one whole number" in failure(check_number, "Q1", "9", 9, whole=True)


def test_a_fraction_given_as_a_percentage_is_told_so():
    assert "not a percentage" in failure(check_number, "Q2", 45, 0.45, fraction=True)
    assert "not a percentage" in failure(check_number, "Q2", torch.tensor(45.0), 0.45, fraction=True)
    assert "not a percentage" not in failure(check_number, "Q2", 0.9, 0.45, fraction=True)
    assert "not a percentage" not in failure(check_number, "Q2", 45, 0.45)


@pytest.mark.parametrize("bad, says", [(True, "a bool"), ("12", "a str"), ([12, 13], "a list"),
                                       (torch.zeros(2), "a Tensor"), (math.nan, "finite"), (math.inf, "finite")])
def test_what_is_not_one_finite_number_is_refused_by_name(bad, says):
    assert says in failure(check_number, "Q2", bad, 12)


# --- configurations ---------------------------------------------------------------------------------

FIELDS = {"fc1": Field(int, choices=(2, 4, 8)), "calibrator": Field(str, choices=("minmax", "mse")),
          "sparsity": Field(float, low=0.0, high=0.99), "epochs": Field(int, low=1, high=20)}
GOOD = {"fc1": 4, "calibrator": "mse", "sparsity": 0.5, "epochs": 3}


def test_a_valid_configuration_comes_back_as_a_plain_dict():
    assert config_of("D", dict(GOOD), FIELDS) == GOOD


@pytest.mark.parametrize("change, says", [
    ({"fc1": 3}, "config['fc1'] = 3: must be one of 2, 4, 8"),
    ({"fc1": 4.0}, "must be one of"),
    ({"fc1": True}, "must be one of"),
    ({"calibrator": "kl"}, "must be one of 'minmax', 'mse'"),
    ({"sparsity": 1.5}, "must be between 0 and 0.99"),
    ({"sparsity": math.nan}, "finite"),
    ({"sparsity": "0.5"}, "must be float, not str"),
    ({"epochs": True}, "must be int, not bool"),
    ({"extra": 1}, "keys the task does not ask for: 'extra'"),
])
def test_a_configuration_problem_names_its_key(change, says):
    message = failure(config_of, "D", {**GOOD, **change}, FIELDS, what="config")
    assert says in message, message


def test_a_configuration_that_is_not_a_dict_or_misses_a_key_is_refused():
    assert "must be a dict" in failure(config_of, "D", [("fc1", 4)], FIELDS)
    assert "misses 'epochs'" in failure(config_of, "D", {k: v for k, v in GOOD.items() if k != "epochs"}, FIELDS)


def test_a_configuration_cannot_carry_code():
    # a function, a class or a lambda is not data: it arrives as <Unsupported> and is refused
    smuggled = {**GOOD, "calibrator": lambda *a: "mse"}
    assert "must be one of" in failure(config_of, "D", smuggled, FIELDS)


# --- partial credit ---------------------------------------------------------------------------------

TIERS = [Tier(1.0, "accuracy at least 90% within 4 bits per weight", lambda m: m["acc"] >= 0.9 and m["bits"] <= 4),
         Tier(0.5, "accuracy at least 80% within 4 bits per weight", lambda m: m["acc"] >= 0.8 and m["bits"] <= 4),
         Tier(0.25, "within 4 bits per weight", lambda m: m["bits"] <= 4)]


def test_tiers_give_the_highest_level_reached_and_say_what_the_next_needs(capsys):
    assert tiered("D", {"acc": 0.95, "bits": 4}, TIERS) is None
    assert tiered("D", {"acc": 0.85, "bits": 4}, TIERS) == Credit(0.5)
    out = capsys.readouterr().out
    assert "50% of the points" in out and "For more: accuracy at least 90%" in out
    assert tiered("D", {"acc": 0.1, "bits": 3}, TIERS) == Credit(0.25)
    assert "lowest tier needs: within 4 bits" in failure(tiered, "D", {"acc": 0.99, "bits": 5}, TIERS)


def test_credit_becomes_nbgrader_partial_points():
    cell = {"cell_type": "code", "metadata": {"nbgrader": {"grade": True, "solution": False, "points": 6,
                                                           "grade_id": "t"}}, "source": "", "outputs": []}
    import nbformat

    cell = nbformat.from_dict(cell)
    cell.outputs = [answers.credit_output(Credit(0.5), 6)]
    assert determine_grade(cell) == (3.0, 6.0)
    assert answers.credit_output(Credit(1.0), 6) is None and answers.credit_output(3.0, 6) is None
    with pytest.raises(ValueError):
        Credit(1.5)


class _NoKernel:
    """A session for test cells that call no student object."""

    @contextlib.contextmanager
    def time_budget(self, seconds):
        yield


class _Checks:
    @staticmethod
    def half():
        print("half of it")
        return Credit(0.5)

    @staticmethod
    def number():
        return 3.0  # a check that returns a number does not grant points


def test_the_sealed_grader_turns_a_final_credit_into_partial_points():
    outputs = sealed.run_test_cell("grader.half()\n", _Checks, _NoKernel(), None, points=4)
    assert [o.output_type for o in outputs] == ["stream", "execute_result"]
    assert outputs[1].data["text/plain"] == "2"
    assert sealed.run_test_cell("grader.number()\n", _Checks, _NoKernel(), None, points=4) == []
    # a credit that is not the cell's last expression grants nothing
    assert [o.output_type for o in sealed.run_test_cell("grader.half()\nx = 1\n", _Checks, _NoKernel(), None,
                                                        points=4)] == ["stream"]


def test_a_written_answer_is_unanswered_until_changed_and_then_waits_for_a_person():
    import nbformat
    from pathlib import Path

    from nbgrader.utils import determine_grade

    root = Path(__file__).resolve().parents[1]
    lab = "lab04_ptq_granularity"
    source = nbformat.read(root / "solutions" / lab / f"{lab}.ipynb", as_version=4)
    released = nbformat.read(root / "labs" / lab / f"{lab}.ipynb", as_version=4)

    def written(nb):
        return next(c for c in nb.cells if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("grade"))

    assert determine_grade(written(sealed.rebuild(source, released))) == (0, 2.0)  # unanswered: 0, no person
    written(released).source = "MX blocks of 32 are better here, because ..."
    assert determine_grade(written(sealed.rebuild(source, released))) == (None, 2.0)  # answered: a person grades


def test_a_design_is_measured_once_and_each_caller_gets_its_own_copy():
    calls = []

    @answers.measured_once
    def measure(design):
        calls.append(dict(design))
        if design["bits"] == 0:
            raise ValueError("no bits")
        return {"error": 0.5 * design["bits"], "runs": [1, 2]}

    first = measure({"bits": 4, "granularity": "mx"})
    first["runs"].append(3)  # a caller changing its result changes nobody else's
    assert measure({"granularity": "mx", "bits": 4}) == {"error": 2.0, "runs": [1, 2]}
    assert measure({"bits": 2, "granularity": "mx"}) == {"error": 1.0, "runs": [1, 2]}
    assert len(calls) == 2
    for _ in range(2):
        with pytest.raises(ValueError):
            measure({"bits": 0, "granularity": "mx"})
    assert len(calls) == 4  # a failed measurement is tried again


def test_a_design_is_measured_refused_over_its_limit_and_graded_in_tiers(capsys):
    def measure(design):
        if design["bits"] == 0:
            raise ValueError("bits must be positive")
        return {"acc": design["acc"], "bits": design["bits"]}

    budget = answers.Limit("bits", 4, lambda m: f"{m['bits']} bits per weight, over the budget of 4.")

    def grade(design, **options):
        return answers.measured_design("D", design, measure, TIERS, lambda m: f"{m['bits']} bits, {m['acc']:.0%}",
                                       limit=budget, **options)

    assert grade({"acc": 0.95, "bits": 4}) is None
    assert "D: 4 bits, 95%" in capsys.readouterr().out
    assert grade({"acc": 0.85, "bits": 3}) == Credit(0.5)
    assert "D: 5 bits per weight, over the budget of 4." in failure(grade, {"acc": 0.95, "bits": 5})
    assert "D: bits must be positive." in failure(grade, {"acc": 0.95, "bits": 0})
    assert "D: training diverged (bits must be positive)" in failure(grade, {"acc": 0.95, "bits": 0},
                                                                     refused="training diverged ({error})")
    assert grade({"acc": 0.1, "bits": 4}) == Credit(0.25)
