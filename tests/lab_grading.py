"""The grading tests every lab gets, written once.

A lab's test module subclasses :class:`LabGradingTests` and declares its data only:

* ``LAB``, ``POINTS`` (grade id -> points), ``N_STUBS`` (solution regions in the release);
* ``DIFFERENT``: correct answers written differently (solution cell id -> source): full marks;
* ``WRONG``: name -> :class:`Wrong`, a plausible mistake: it costs its question and only that one,
  and the failure message says what went wrong;
* ``HIDDEN_ONLY``: the name of a ``WRONG`` answer that passes the visible cases and fails a hidden one
  (its feedback is searched for the hidden test);
* ``CHEAT_TARGET``: the :class:`Target` task that the standard cheats (:func:`standard_cheats`) attack;
* ``CHEATS``: name -> :class:`Cheat`, the lab's own attacks beside the standard ones;
* ``ANSWER_LINES``: lines of the reference answers that the release must not show;
* ``WRITTEN``: grade id -> points of each written answer graded by a person (nbgrader's manual
  grading): it must wait for a person, never be graded automatically;
* ``CHOICE``: a multiple-choice question (:class:`Choice`), attacked by the choice cheats (every letter
  at once, a string that equals everything);
* ``PARTIAL``: name -> :class:`Partial`, a design that reaches a lower tier of its target and earns
  that tier's points;
* ``CELL_SECONDS``: how long a cell may run when the lab's submissions are graded (the class command's
  ``--timeout``; the course allows 120 s). A few times the slowest cell of a correct submission, so that
  the submissions that hang on purpose (``infinite_loop``) cost seconds, not minutes.

Every submission of a lab (the reference answers, the untouched release, the answers written
differently, the mistakes, the designs short of their targets and each cheat) is graded in one run of
the class command
(``python -m qlib.grading.course grade``, nbgrader's gradebook) in a temporary course. The runs of
all the labs of a session are started in the background with the session's first test
(:class:`GradingRuns`); the class-scoped ``graded`` fixture of ``tests/conftest.py`` waits for its
lab's (conftest also turns ``WRONG`` and the cheats into parameters). The tests read the results by
name (:class:`Graded`).

A mistake, a design short of its target and an answer that names every choice are ordinary answers:
each can cost its own question only. So several of them, in different cells and for different
questions, share one submission (:func:`share_submissions`; a mistake declared ``alone`` does not),
and each is still checked on its own: its
question earns what it should, and every question no answer of its submission touches earns full
marks. The attacks on the grader itself (the standard cheats and each lab's own) are graded alone.
"""
from __future__ import annotations

import ast
import html as htmllib
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nbformat

from tests import nbgrader_course as course

STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


class Wrong(NamedTuple):
    """A plausible mistake: ``source`` in solution cell ``cell`` costs ``question`` only; its message says ``says``.

    ``alone``: grade it in a submission of its own, for a mistake whose message depends on what
    another answer computes (it reads a value that the lab's experiment learns with the student's code).
    """

    cell: str
    question: str
    says: str
    source: str
    alone: bool = False


class Cheat(NamedTuple):
    """An attempt to game the grader: nothing for ``question``, everything else graded.

    ``cells``: solution cell id -> source (the other cells hold the reference answers); ``tamper``:
    "edit" or "delete" the test cell of ``question``; ``says``: words its failure message must contain.
    """

    cells: dict[str, str]
    question: str
    says: str = "GradingFailure"  # by default: failed with the grader's message, not with a crash
    tamper: str | None = None


class Choice(NamedTuple):
    """A multiple-choice question: its answer cell, its test cell, the name it sets and its letters."""

    cell: str
    question: str
    name: str
    choices: str = "abcd"


class Partial(NamedTuple):
    """A design (answer cells -> source) that reaches a lower tier: ``points`` of ``question``."""

    cells: dict[str, str]
    question: str
    points: float


class Target(NamedTuple):
    """The task the standard cheats attack: its solution cell, its test cell, and qlib's function for it."""

    cell: str
    question: str
    reference: str  # dotted path, e.g. "qlib.linear.quantize"


def _signature(answer: str) -> tuple[str, str, str]:
    """(name, parameters, first parameter) of the first function the answer defines."""
    fn = next(n for n in ast.parse(answer).body if isinstance(n, ast.FunctionDef))
    return fn.name, ast.unparse(fn.args), fn.args.args[0].arg


#: The attacks every lab is tested against (see :func:`standard_cheats`).
STANDARD_CHEATS = ("calls_qlib_reference", "patches_the_checks", "edits_test_cell", "deletes_test_cell",
                   "infinite_loop")

#: The comparisons a check might use, made to say "equal" to everything.
PATCHED_COMPARISONS = """import numpy, torch
numpy.array_equal = numpy.allclose = lambda *a, **k: True
numpy.isclose = lambda a, b, **k: numpy.ones(numpy.shape(a), bool)
torch.equal = torch.allclose = lambda *a, **k: True

"""


#: The attacks on a multiple-choice question (see :func:`choice_cheats`).
CHOICE_CHEATS = ("names_every_choice", "choice_equal_to_everything")


def choice_cheats(choice: Choice) -> dict[str, Cheat]:
    """Answers that try every choice at once: all the letters, and a string equal to every letter."""
    everything = (f"class Everything(str):\n    def __eq__(self, other):\n        return True\n\n"
                  f"    __hash__ = str.__hash__\n\n\n{choice.name} = Everything('?')\n")
    return {"names_every_choice": Cheat({choice.cell: f"{choice.name} = {choice.choices!r}\n"}, choice.question,
                                        "not one of the choices"),
            "choice_equal_to_everything": Cheat({choice.cell: everything}, choice.question, "not one of the choices")}


def standard_cheats(target: Target, answer: str, check: str) -> dict[str, Cheat]:
    """The attacks every lab must withstand, on ``target`` (whose reference answer is ``answer``).

    ``check`` is the name of the check the test cell calls (``grader.check_...``).
    """
    name, params, first = _signature(answer)
    module, function = target.reference.rsplit(".", 1)
    alias = "" if function == name else f" as {name}"
    returns_input = f"def {name}({params}):\n    return {first}\n"  # wrong: the checks must catch it
    return {
        "calls_qlib_reference": Cheat({target.cell: f"from {module} import {function}{alias}\n"}, target.question,
                                      "reference answer"),
        "patches_the_checks": Cheat({target.cell: f"grader.{check} = lambda *a, **k: None\n" + PATCHED_COMPARISONS
                                    + returns_input}, target.question),
        "edits_test_cell": Cheat({target.cell: STUB}, target.question, "defines no", "edit"),
        "deletes_test_cell": Cheat({target.cell: STUB}, target.question, "defines no", "delete"),
        # it waits rather than spins: the grader's limit is on the clock, and a loop that burns a core for
        # each lab would only slow the rest of the session (tests/test_sealed_grading.py has one that spins)
        "infinite_loop": Cheat({target.cell: f"import time\n\ndef {name}({params}):\n    while True:\n"
                                             "        time.sleep(1)\n"},
                               target.question, "did not return within"),
    }


@dataclass
class Graded:
    """One lab's submissions, each graded by the class command; results by submission name."""

    lab: str
    course: Path
    released: nbformat.NotebookNode
    scores: dict[str, dict[str, float]]  # submission -> grade id -> points
    cheats: dict[str, Cheat]  # the standard cheats and the lab's own
    manual: dict[str, set[str]]  # submission -> grade ids waiting for a person (nbgrader's needs_manual_grade)
    answers: dict[str, Answer]  # the ordinary answers, by name
    submission: dict[str, str]  # ordinary answer -> the submission that holds it

    def scores_of(self, name: str) -> dict[str, float]:
        """The grades of the submission that holds ``name`` (an answer, a cheat or a submission)."""
        return self.scores[self.submission.get(name, name)]

    def expected(self, name: str, full_marks: dict[str, float]) -> dict[str, float]:
        """What the submission holding ordinary answer ``name`` should earn: full marks, but for its answers."""
        group = [a for a, s in self.submission.items() if s == self.submission[name]]
        return {**full_marks, **{self.answers[a].question: self.answers[a].points for a in group}}

    @property
    def correct(self) -> dict[str, float]:
        return self.scores["reference"]

    @property
    def untouched(self) -> dict[str, float]:
        return self.scores["untouched"]

    @property
    def written_differently(self) -> dict[str, float]:
        return self.scores["written_differently"]

    def output(self, name: str, grade_id: str) -> str:
        """What cell ``grade_id`` printed when submission ``name`` was graded."""
        return course.cell_output(self.course, self.lab, self.submission.get(name, name), grade_id)

    def feedback(self, name: str) -> str:
        """The feedback page of submission ``name`` (``nbgrader generate_feedback``, made once), as HTML."""
        student = self.submission.get(name, name)
        pages = list((self.course / "feedback" / student / self.lab).glob("*.html"))
        if not pages:
            course.nbgrader("generate_feedback", self.lab, "--student", student, "--force", cwd=self.course)
            pages = list((self.course / "feedback" / student / self.lab).glob("*.html"))
        return pages[0].read_text()


def page_text(html: str) -> str:
    """What an HTML page shows: its text without tags, entities decoded (code is highlighted span by span)."""
    return htmllib.unescape(re.sub(r"<[^>]+>", "", html))


def _cell(nb: nbformat.NotebookNode, grade_id: str):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def hidden_test_lines(lab: str, grade_id: str) -> list[str]:
    """The lines of the hidden tests of test cell ``grade_id`` in the instructor's notebook."""
    source = _cell(course.read_notebook(course.ROOT / "solutions" / lab / f"{lab}.ipynb"), grade_id).source
    regions = re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", source, re.S)
    lines = [line.strip() for region in regions for line in region.splitlines() if line.strip()]
    assert lines, f"{lab}: {grade_id} has no hidden tests"
    return lines


def cheats_of(cls, released: nbformat.NotebookNode, answers: dict[str, str]) -> dict[str, Cheat]:
    """The standard cheats on the lab's ``CHEAT_TARGET``, and the lab's own."""
    target = cls.CHEAT_TARGET
    check = re.search(r"grader\.(check_\w+)\(", _cell(released, target.question).source).group(1)
    own = set(cls.CHEATS) & set(STANDARD_CHEATS + CHOICE_CHEATS)
    assert not own, f"{cls.__name__}: {sorted(own)} are standard cheats; give the lab's own another name"
    choice = choice_cheats(cls.CHOICE) if cls.CHOICE else {}
    return {**standard_cheats(target, answers[target.cell], check), **choice, **cls.CHEATS}


class Answer(NamedTuple):
    """An ordinary answer (a mistake, a design short of its target, a choice): ``question`` earns ``points``.

    ``alone``: it shares its submission with no other answer.
    """

    cells: dict[str, str]
    question: str
    points: float
    alone: bool = False


def answers_of(cls, cheats: dict[str, Cheat]) -> dict[str, Answer]:
    """The lab's mistakes, its designs short of their targets and the choice cheats, as answers."""
    answers = {name: Answer({wrong.cell: wrong.source}, wrong.question, 0, wrong.alone)
               for name, wrong in cls.WRONG.items()}
    answers |= {name: Answer(partial.cells, partial.question, partial.points) for name, partial in cls.PARTIAL.items()}
    answers |= {name: Answer(cheats[name].cells, cheats[name].question, 0) for name in CHOICE_CHEATS if name in cheats}
    return answers


def share_submissions(answers: dict[str, Answer]) -> dict[str, list[str]]:
    """Submission name -> the answers it holds: no two of one submission share a cell or a question,
    and an answer ``alone`` shares with none.

    First fit, in the order of the answers' names, so the grouping is the same in every run.
    """
    groups: list[list[str]] = []
    for name in sorted(answers):
        mine = answers[name]
        group = next((g for g in groups if not mine.alone and all(
            not answers[other].alone and mine.question != answers[other].question
            and not set(mine.cells) & set(answers[other].cells) for other in g)), None)
        if group is None:
            groups.append([name])
        else:
            group.append(name)
    return {f"answers_{i}": group for i, group in enumerate(groups, 1)}


def grade_submissions(cls, folder: Path, workers: int = 2) -> Graded:
    """Grade the reference, the untouched release, the answers written differently, the ordinary answers
    (several to a submission, :func:`share_submissions`) and each cheat on its own.

    One run of the class command with ``workers`` workers, in a new course in ``folder``.
    """
    lab = cls.LAB
    tmp = course.make_course(folder / "c", lab)
    released = course.read_notebook(course.notebook_path(tmp, "labs", lab))
    source = course.read_notebook(course.ROOT / "solutions" / lab / f"{lab}.ipynb")
    reference = course.solution_code(source)
    cheats = cheats_of(cls, released, reference)
    answers = answers_of(cls, cheats)
    shared = share_submissions(answers)
    subs = {"reference": course.fill(released, {**reference, **course.written_answers(source)}), "untouched": released,
            "written_differently": course.fill(released, {**reference, **cls.DIFFERENT})}
    for name, group in shared.items():
        subs[name] = course.fill(released, {**reference, **{c: s for a in group for c, s in answers[a].cells.items()}})
    for name, cheat in cheats.items():
        if name not in answers:
            nb = course.fill(released, {**reference, **cheat.cells})
            subs[name] = course.tamper(nb, cheat.question, cheat.tamper) if cheat.tamper else nb
    assert len(subs) == 3 + len(shared) + len(set(cheats) - set(answers)), "two submissions share a name"
    limit = ("--timeout", str(cls.CELL_SECONDS)) if cls.CELL_SECONDS else ()
    scores = course.grade_class(tmp, lab, subs, workers, *limit)  # the class command: nbgrader's grades
    submission = {a: name for name, group in shared.items() for a in group}
    return Graded(lab, tmp, released, scores, cheats, course.waiting_for_a_person(tmp, lab), answers, submission)


#: Labs graded at the same time, each by the class command with two workers. One: the session's
#: other tests keep the rest of two cores busy, and more at once would only slow every cell down.
LABS_AT_ONCE = 1


def grade_lab(cls, folder: Path) -> Graded:
    """Every submission of lab class ``cls`` graded (:func:`grade_submissions`), and the feedback page
    of its answer that fails a hidden check made (nbgrader's feedback takes seconds)."""
    graded = grade_submissions(cls, folder)
    graded.feedback(cls.HIDDEN_ONLY)
    return graded


class GradingRuns:
    """The grading runs of the lab classes of a session: one class command run per lab, two workers each.

    The runs start at once, in the background, :data:`LABS_AT_ONCE` at a time beside the session's
    other tests; each lab class waits for its own (a class not given here is graded when it asks).

    The runs (:func:`grade_lab`) are made in another process, not in a thread of the session's:
    CPython 3.11 keeps the state of ``ast.parse`` per interpreter, not per thread, and two threads
    that parse at once can fail with "SystemError: AST constructor recursion depth mismatch"
    (python/cpython#106905).
    """

    def __init__(self, classes: list, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._folders = {cls: tmp_path_factory.mktemp("course") for cls in classes}
        self._workers = ProcessPoolExecutor(LABS_AT_ONCE, mp_context=multiprocessing.get_context("spawn"))
        self._runs: dict = {}
        for cls in classes:
            self._start(cls)

    def _start(self, cls) -> None:
        if cls not in self._folders:  # a class not given at the start
            self._folders[cls] = self._tmp.mktemp("course")
        self._runs[cls] = self._workers.submit(grade_lab, cls, self._folders[cls])

    def result(self, cls) -> Graded:
        if cls not in self._runs:
            self._start(cls)
        return self._runs[cls].result()

    def close(self) -> None:
        self._workers.shutdown(wait=True, cancel_futures=True)


class LabGradingTests:
    LAB: str
    POINTS: dict[str, int]
    N_STUBS: int
    DIFFERENT: dict[str, str] = {}
    WRONG: dict[str, Wrong] = {}
    HIDDEN_ONLY: str
    CHEAT_TARGET: Target
    CHEATS: dict[str, Cheat] = {}
    ANSWER_LINES: tuple[str, ...] = ()
    CELL_SECONDS: float | None = None  # None: the course's own limit
    WRITTEN: dict[str, int] = {}
    CHOICE: Choice | None = None
    PARTIAL: dict[str, Partial] = {}

    @property
    def full_marks(self) -> dict[str, float]:
        """Every autograded point, and 0 (so far) for the answers a person grades."""
        return {**self.POINTS, **{grade_id: 0 for grade_id in self.WRITTEN}}

    def test_reference_solution_gets_full_marks(self, graded):
        assert graded.correct == self.full_marks, graded.correct

    def test_untouched_notebook_gets_zero(self, graded):
        assert sum(graded.untouched.values()) == 0, graded.untouched
        assert not graded.manual["untouched"], "an unanswered written question needs no person"

    def test_correct_answers_written_differently_get_full_marks(self, graded):
        assert graded.written_differently == self.full_marks, graded.written_differently

    def test_written_answers_wait_for_a_person(self, graded):
        # a written answer is never graded automatically: it waits, at 0 points, for manual grading
        assert graded.manual["reference"] == set(self.WRITTEN), graded.manual["reference"]
        for grade_id in self.WRITTEN:
            assert graded.correct[grade_id] == 0

    def test_wrong_answer_loses_its_question_only(self, graded, wrong):
        # its question earns 0; the questions no other answer of its submission touches earn full marks
        assert graded.expected(wrong, self.full_marks)[self.WRONG[wrong].question] == 0
        assert graded.scores_of(wrong) == graded.expected(wrong, self.full_marks), graded.scores_of(wrong)


    def test_wrong_answer_is_explained(self, graded, wrong):
        text = graded.output(wrong, self.WRONG[wrong].question)
        assert self.WRONG[wrong].says and self.WRONG[wrong].says in text, text

    def test_cheat_earns_nothing_for_its_question(self, graded, cheat):
        # nothing for the question, and the rest of the notebook is still graded
        question = graded.cheats[cheat].question
        expected = graded.expected(cheat, self.full_marks) if cheat in graded.answers else self.full_marks
        assert graded.scores_of(cheat) == {**expected, question: 0}, graded.scores_of(cheat)

    def test_cheat_is_explained(self, graded, cheat):
        text = graded.output(cheat, graded.cheats[cheat].question)
        assert graded.cheats[cheat].says and graded.cheats[cheat].says in text, text

    def test_feedback_leaks_no_hidden_test(self, graded):
        name, question = self.HIDDEN_ONLY, self.WRONG[self.HIDDEN_ONLY].question
        assert self.WRONG[name].says.startswith("A hidden check failed"), "HIDDEN_ONLY should fail a hidden check"
        page = page_text(graded.feedback(name))
        assert "A hidden check failed" in page
        visible = next(line for line in _cell(graded.released, question).source.splitlines() if "grader." in line)
        assert visible in page, "the feedback should show the visible test (else the search below sees no code)"
        assert "seed=" not in page and "HIDDEN_SEED" not in page
        for line in hidden_test_lines(self.LAB, question):
            assert line not in page, line
        # the hidden check failed with a message, not a traceback that would show its code
        hidden_output = graded.output(name, question)
        assert "GradingFailure" in hidden_output and "most recent call last" not in hidden_output

    def test_released_notebook_has_no_solution_and_no_hidden_test(self, graded):
        text = "\n".join(c.source for c in graded.released.cells)
        assert "BEGIN SOLUTION" not in text and "HIDDEN" not in text and "seed=" not in text
        assert text.count("raise NotImplementedError()") == self.N_STUBS

    def test_released_notebook_shows_no_line_of_the_answer(self, graded):
        assert self.ANSWER_LINES, "name a few lines of the reference answers"
        source = course.read_notebook(course.ROOT / "solutions" / self.LAB / f"{self.LAB}.ipynb")
        solution = "\n".join(c.source for c in source.cells)
        text = "\n".join(c.source for c in graded.released.cells)
        for line in self.ANSWER_LINES:
            assert line in solution, f"{line!r} is not a line of the reference answers"
            assert line not in text, line

    def test_committed_student_lab_is_generated_from_the_solution(self, graded):
        committed = course.read_notebook(course.ROOT / "labs" / self.LAB / f"{self.LAB}.ipynb")

        def cells(nb):
            return [(c.cell_type, c.source, c.metadata.get("nbgrader")) for c in nb.cells]

        assert cells(committed) == cells(graded.released), (
            f"labs/ is out of date: run `nbgrader generate_assignment {self.LAB} --force`")


class DesignTargetTests:
    """The tests of a lab with a design task graded in tiers (mixed into its LabGradingTests class)."""

    def test_design_short_of_its_target_earns_its_tier(self, graded, partial):
        question, points = self.PARTIAL[partial].question, self.PARTIAL[partial].points
        assert graded.expected(partial, self.full_marks)[question] == points
        assert graded.scores_of(partial) == graded.expected(partial, self.full_marks), graded.scores_of(partial)
        assert "of the points. For more:" in graded.output(partial, question)



def design_cheats(cell: str, question: str, design: dict, says: str, what: str = "design") -> dict[str, Cheat]:
    """The attacks on a design answered as a dict (``{cell} = {...}`` in answer cell ``cell``), checked by ``question``.

    * ``{what}_smuggles_code``: ``design`` (a right answer) with its first number or string made an
      instance of a subclass that equals everything and lies inside every range, and its last entry
      a function that returns it. The grader reads a design as data: the subclass arrives as its
      plain value, the function as no value at all, which the check refuses, saying ``says``;
    * ``{what}_is_not_a_dict``: an object that hands out ``design``'s entries by key, but is not a
      dict: refused, "must be a dict".
    """
    def leaves(entries: dict, path: tuple = ()) -> list[tuple[tuple, object]]:
        # (key path, value) of every entry that is not itself a dict, in order
        return [leaf for key, value in entries.items()
                for leaf in (leaves(value, path + (key,)) if isinstance(value, dict) else [(path + (key,), value)])]

    def source(value, path: tuple, replaced: dict[tuple, str]) -> str:
        # value written as Python, the entries at the paths of ``replaced`` written by their template
        if isinstance(value, dict):
            return "{" + ", ".join(f"{key!r}: {source(v, path + (key,), replaced)}" for key, v in value.items()) + "}"
        return replaced[path].format(value) if path in replaced else repr(value)

    entries = leaves(design)
    liar = next(path for path, value in entries if isinstance(value, (int, float, str)) and not isinstance(value, bool))
    base = type(dict(entries)[liar]).__name__
    everything = (f"class Everything({base}):\n    def __eq__(self, other):\n        return True\n\n"
                  f"    def __lt__(self, other):\n        return False\n\n"
                  f"    __le__ = __ge__ = __eq__\n    __gt__ = __ne__ = __lt__\n    __hash__ = {base}.__hash__\n\n\n")
    smuggled = source(design, (), {liar: "Everything({!r})", entries[-1][0]: "lambda: {!r}"})
    not_a_dict = (f"ENTRIES = {design!r}\n\n\nclass Design:\n"
                  f"    def __getitem__(self, key):\n        return ENTRIES[key]\n\n"
                  f"    def keys(self):\n        return ENTRIES.keys()\n\n"
                  f"    def items(self):\n        return ENTRIES.items()\n\n\n{cell} = Design()\n")
    return {f"{what}_smuggles_code": Cheat({cell: f"{everything}{cell} = {smuggled}\n"}, question, says),
            f"{what}_is_not_a_dict": Cheat({cell: not_a_dict}, question, "must be a dict")}
