"""The grading tests every lab gets, written once.

A lab's test module subclasses :class:`LabGradingTests` and fills in its data:

* ``LAB``, ``POINTS`` (grade cell id -> points), ``N_STUBS`` (solution regions in the release);
* ``DIFFERENT``: correct answers written differently (solution cell id -> source): full marks;
* ``WRONG``: name -> (solution cell id, the question it must cost, source): that question only;
* ``CHEATS``: name -> ({cell id: source}, (grade id, "edit" | "delete") or None, question):
  nothing for that question, everything else graded;
* ``EXPLAINED``: (submission, grade id, words its failure message must contain).

One class-scoped run (the ``graded`` fixture of ``tests/conftest.py``) grades every submission
with the class command (``python -m qlib.grading.course grade``, which writes nbgrader's gradebook)
in a temporary course directory; ``tests/conftest.py`` also turns
WRONG, CHEATS and EXPLAINED into parameters.
"""
from __future__ import annotations

from tests import nbgrader_course as course


def grade_submissions(cls, tmp_path_factory):
    """Autograde the reference, the untouched release and every variant of ``cls``.

    Returns (scores by student, course directory by student, released notebook).
    """
    lab = cls.LAB
    tmp = course.make_course(tmp_path_factory.mktemp("course") / "c", lab)
    released = course.read_notebook(course.notebook_path(tmp, "labs", lab))
    answers = course.solution_code(course.read_notebook(course.ROOT / "solutions" / lab / f"{lab}.ipynb"))
    subs = {"reference": course.fill(released, answers), "untouched": released,
            "written_differently": course.fill(released, {**answers, **cls.DIFFERENT})}
    for name, (cell, _, code) in cls.WRONG.items():
        subs[name] = course.fill(released, {**answers, cell: code})
    for name, (override, tamper, _) in cls.CHEATS.items():
        nb = course.fill(released, {**answers, **override})
        subs[name] = course.tamper(nb, *tamper) if tamper else nb
    scores = course.grade_class(tmp, lab, subs, 2)  # the class command: nbgrader's grades, two workers
    return scores, {student: tmp for student in subs}, released


class LabGradingTests:
    LAB: str
    POINTS: dict[str, int]
    N_STUBS: int
    DIFFERENT: dict[str, str] = {}
    WRONG: dict[str, tuple[str, str, str]] = {}
    CHEATS: dict[str, tuple[dict[str, str], tuple[str, str] | None, str]] = {}
    EXPLAINED: list[tuple[str, str, str]] = []

    def test_reference_solution_gets_full_marks(self, graded):
        assert graded[0]["reference"] == self.POINTS, graded[0]["reference"]

    def test_untouched_notebook_gets_zero(self, graded):
        assert sum(graded[0]["untouched"].values()) == 0, graded[0]["untouched"]

    def test_correct_answers_written_differently_get_full_marks(self, graded):
        assert graded[0]["written_differently"] == self.POINTS, graded[0]["written_differently"]

    def test_wrong_answer_loses_its_question_only(self, graded, wrong):
        _, question, _ = self.WRONG[wrong]
        assert graded[0][wrong] == {**self.POINTS, question: 0}, graded[0][wrong]

    def test_gaming_earns_nothing_for_that_question(self, graded, cheat):
        # nothing for the question, and the rest of the notebook is still graded
        question = self.CHEATS[cheat][2]
        assert graded[0][cheat] == {**self.POINTS, question: 0}, graded[0][cheat]

    def test_failures_explain_themselves(self, graded, explained):
        name, grade_id, words = explained
        text = course.cell_output(graded[1][name], self.LAB, name, grade_id)
        assert words in text, text

    def test_released_notebook_has_no_solution_and_no_hidden_test(self, graded):
        text = "\n".join(c.source for c in graded[2].cells)
        assert "BEGIN SOLUTION" not in text and "HIDDEN" not in text and "seed=" not in text
        assert text.count("raise NotImplementedError()") == self.N_STUBS

    def test_committed_student_lab_is_generated_from_the_solution(self, graded):
        committed = course.read_notebook(course.ROOT / "labs" / self.LAB / f"{self.LAB}.ipynb")

        def cells(nb):
            return [(c.cell_type, c.source, c.metadata.get("nbgrader")) for c in nb.cells]

        assert cells(committed) == cells(graded[2]), (
            f"labs/ is out of date: run `nbgrader generate_assignment {self.LAB} --force`")
