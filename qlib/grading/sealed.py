"""Sealed grading: a submission runs in a sandbox, its verdict is computed outside it.

Two nbgrader preprocessors, named in ``nbgrader_config.py``:

* :class:`RebuildFromSource` (sanitizing, in place of nbgrader's OverwriteCells):
  the notebook that is graded is the instructor's source notebook, cell for
  cell, with each solution cell's text taken from the submission (matched by
  its ``grade_id``). Which cells are graded, locked or solutions, and the
  text of every locked cell (set-up, tests, experiments), come from the
  source, never from the submitted file. Cells the student added are kept,
  without nbgrader metadata, after the cell they followed.
* :class:`SealedExecute` (in place of nbgrader's Execute): runs the notebook's
  cells in a sandboxed kernel (:mod:`qlib.grading.sandbox`), except the test
  cells. A test cell runs here, in the grader: its names ``grader`` and
  ``HIDDEN_SEED`` are the lab's checks and this submission's hidden seed
  (:mod:`qlib.grading.secret`); every other name in it stands for the object
  of that name in the student's kernel (:class:`~qlib.grading.remote.StudentObject`),
  which the checks call, and compare the returned data against qlib's
  reference here. The test cell's outputs (and so nbgrader's score) are
  that comparison's alone, whatever the kernel printed or raised.

A cell that times out, or kills its kernel, costs only itself: the session
starts a fresh sandboxed kernel, replays the cells that ran before, and goes on.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import importlib
import io
import re
import tempfile
import time
from pathlib import Path

import nbformat
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Float

from qlib.grading import records, sandbox
from qlib.grading.answers import credit_output
from qlib.grading.harness import GradingFailure
from qlib.grading.records import CellRecord, GradingRecord
from qlib.grading.remote import NotebookSession, StudentObject

STUB = {"code": "# YOUR CODE HERE\nraise NotImplementedError()", "markdown": "YOUR ANSWER HERE"}


# --- which cells are graded, and with what -----------------------------------------------------------

def nbgrader_metadata(cell) -> dict:
    """The cell's ``metadata.nbgrader`` (empty for a cell without one)."""
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_test_cell(cell) -> bool:
    """An autograded test cell: graded, not a solution, code."""
    meta = nbgrader_metadata(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def is_student_code(cell) -> bool:
    """A code cell the student wrote: a solution cell, or one without nbgrader metadata."""
    meta = nbgrader_metadata(cell)
    return cell.cell_type == "code" and (bool(meta.get("solution")) or not meta)


def _released_checksum(cell) -> str:
    """The checksum nbgrader gave the released (unanswered) copy of a graded answer cell.

    nbgrader grades an answer cell whose checksum still matches the release as unanswered (0 points)
    and every other one by hand; the instructor's source cell carries no checksum, so it is computed
    here from the release's stub.
    """
    from nbgrader.utils import compute_checksum

    released = copy.deepcopy(cell)
    released.source = STUB[cell.cell_type]
    return compute_checksum(released)


def rebuild(source: nbformat.NotebookNode, submitted: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook to grade: ``source``'s cells, with the student's answers and added cells."""
    known = {nbgrader_metadata(c).get("grade_id") for c in source.cells} - {None}
    answers: dict[str, str] = {}
    added: dict[str | None, list] = {}
    anchor = None
    for cell in submitted.cells:
        grade_id = nbgrader_metadata(cell).get("grade_id")
        if grade_id in known:
            answers.setdefault(grade_id, (cell.cell_type, cell.source))
            anchor = grade_id
        elif cell.cell_type in ("code", "markdown"):
            new = (nbformat.v4.new_code_cell if cell.cell_type == "code" else nbformat.v4.new_markdown_cell)(
                str(cell.source))
            added.setdefault(anchor, []).append(new)
    nb = copy.deepcopy(source)
    cells = list(added.get(None, []))
    for cell in nb.cells:
        meta = nbgrader_metadata(cell)
        if cell.cell_type == "code":
            cell.update(outputs=[], execution_count=None)
        if meta.get("solution"):
            kind, text = answers.get(meta["grade_id"], (None, None))
            cell.source = text if kind == cell.cell_type else STUB.get(cell.cell_type, "")
            if meta.get("grade"):
                meta["checksum"] = _released_checksum(cell)
        cells.append(cell)
        cells.extend(added.get(meta.get("grade_id"), []) if meta else [])
    nb.cells = cells
    return nb


HIDDEN_TESTS = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[ \t]*\n?", re.S | re.M)


def without_hidden_tests(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose test cells lack their hidden part (the copy the sandbox may see)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if is_test_cell(cell):
            cell.source = HIDDEN_TESTS.sub("", cell.source)
    return nb


def lab_module(assignment: str):
    """The checks of a lab: ``qlib.grading.lab03`` for ``lab03_linear_quantization``."""
    return importlib.import_module(f"qlib.grading.{assignment.split('_')[0]}")


def _free_names(source: str) -> set[str]:
    tree = ast.parse(source)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _error_output(ename: str, message: str):
    lines = message.splitlines() or [""]
    return nbformat.v4.new_output("error", ename=ename, evalue=message,
                                  traceback=[f"\x1b[0;31m{ename}\x1b[0m: {lines[0]}"] + lines[1:])


def _exec_returning_last(source: str, namespace: dict):
    """Run ``source`` like a notebook cell: the value of its last line if that line is an expression."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<test cell>", "exec"), namespace)  # the instructor's test cell
    return eval(compile(ast.Expression(last.value), "<test cell>", "eval"), namespace) if last else None


def run_test_cell(source: str, checks, session: NotebookSession, seed: int | None, timeout: float = 120.0,
                  points: float = 0.0) -> list:
    """The outputs of one test cell, computed here from what the student's objects return.

    The calls into the kernel share ``timeout`` seconds: a function that is merely slow on each of
    a check's many cases cannot hold grading up for longer. A check that ends the cell with a
    :class:`~qlib.grading.answers.Credit` earns that fraction of the cell's ``points``.
    """
    namespace = {"__builtins__": builtins, "grader": checks, "HIDDEN_SEED": seed}
    for name in _free_names(source) - set(namespace) - set(dir(builtins)):
        namespace[name] = StudentObject(session, name)
    printed = io.StringIO()
    outputs = []
    try:
        with contextlib.redirect_stdout(printed), session.time_budget(timeout):
            credit = credit_output(_exec_returning_last(source, namespace), points)
        if credit is not None:
            outputs.append(credit)
    except GradingFailure as failure:
        outputs.append(_error_output("GradingFailure", str(failure)))
    except Exception as err:  # noqa: BLE001 (a check that broke on an unexpected answer still fails the task)
        outputs.append(_error_output("GradingError", f"the grader could not check this answer "
                                                     f"({type(err).__name__}). Check the type and shape "
                                                     "of what your function returns."))
    if printed.getvalue():
        outputs.insert(0, nbformat.v4.new_output("stream", name="stdout", text=printed.getvalue()))
    return outputs


def _note(result, timeout: float) -> list:
    if result.status == "timeout":
        return [_error_output("TimeoutError", f"This cell did not finish within {timeout:g} s and was stopped; "
                                               "the rest of the notebook ran in a fresh kernel without it.")]
    if result.status == "died":
        return [_error_output("DeadKernelError", "The kernel stopped while this cell ran (it exited, crashed or ran "
                                                 "out of memory); the rest of the notebook ran in a fresh kernel "
                                                 "without it.")]
    return []


def _error_text(outputs: list) -> str:
    """``Name: value`` of the first error among ``outputs`` (empty when there is none)."""
    for out in outputs:
        if out.get("output_type") == "error":
            return f"{out.get('ename', '')}: {out.get('evalue', '')}"
    return ""


def _kind(cell) -> str:
    meta = nbgrader_metadata(cell)
    return "test" if is_test_cell(cell) else "solution" if meta.get("solution") else "locked" if meta else "student"


def run_notebook(nb: nbformat.NotebookNode, checks, seed_of, timeout: float = 120.0, log=None) -> list[CellRecord]:
    """Run ``nb`` in place: its cells in a sandboxed kernel, its test cells here.

    ``seed_of(grade_id)`` gives the hidden seed of a test cell (None: visible checks only).
    Returns what happened in each code cell (status, seconds, error message).
    """
    ran = []
    with tempfile.TemporaryDirectory(prefix="qlib-submission-") as folder:
        path = Path(folder) / "submission.ipynb"
        nbformat.write(without_hidden_tests(nb), path)
        with NotebookSession(path) as session:
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                grade_id, start = nbgrader_metadata(cell).get("grade_id"), time.monotonic()
                if is_test_cell(cell):
                    cell.outputs = run_test_cell(cell.source, checks, session, seed_of(grade_id), timeout,
                                                 nbgrader_metadata(cell).get("points", 0))
                    message = _error_text(cell.outputs)
                    status = "failed" if message else "passed"
                else:
                    result = session.run_cell(cell.source, timeout)
                    cell.outputs = result.outputs + _note(result, timeout)
                    cell.execution_count = result.execution_count
                    status, message = result.status, _error_text(cell.outputs)
                    if log and status in ("timeout", "died"):
                        log(f"cell {grade_id or '(student cell)'}: {status}")
                ran.append(CellRecord(grade_id, _kind(cell), status, round(time.monotonic() - start, 3),
                                      message[:2000]))
    return ran


def seeds_of(nb: nbformat.NotebookNode, lab: str, student: str, key: bytes | None = None) -> dict[str, int]:
    """grade_id -> the hidden seed of each test cell of this student's (rebuilt) notebook."""
    from qlib.grading import secret  # the course grader's alone (the student edition leaves it out)

    key = secret.course_secret() if key is None else key
    digest = secret.code_digest([c.source for c in nb.cells if is_student_code(c)])
    return {nbgrader_metadata(c)["grade_id"]: secret.hidden_seed(key, lab, nbgrader_metadata(c)["grade_id"], student, digest)
            for c in nb.cells if is_test_cell(c)}


# --- nbgrader ------------------------------------------------------------------------------------------

class RebuildFromSource(NbGraderPreprocessor):
    """Sanitize: rebuild the submission on the instructor's source notebook (see the module docstring)."""

    def preprocess(self, nb, resources):
        lab, notebook = resources["nbgrader"]["assignment"], resources["nbgrader"]["notebook"]
        coursedir = CourseDirectory(config=self.config)
        path = Path(coursedir.format_path(coursedir.source_directory, ".", lab)) / f"{notebook}.ipynb"
        source = nbformat.read(path, as_version=4)
        return rebuild(source, nb), resources


class SealedExecute(NbGraderPreprocessor):
    """Autograde: the notebook in a sandbox, the test cells here (see the module docstring)."""

    timeout = Float(120.0, help="Seconds each cell may run in the student's kernel.").tag(config=True)

    def preprocess(self, nb, resources):
        lab, student = resources["nbgrader"]["assignment"], resources["nbgrader"]["student"]
        notebook, start = resources["nbgrader"]["notebook"], time.monotonic()
        record = GradingRecord(lab, student, notebook, "graded", 0.0, graded_at=records.now(),
                               worker=records.worker_name())
        seeds = seeds_of(nb, lab, student)
        try:
            record.cells = run_notebook(nb, lab_module(lab), seeds.get, self.timeout, log=self.log.warning)
        except Exception as err:
            record.outcome, record.error = "crashed", f"{type(err).__name__}: {err}"
            if isinstance(err, sandbox.SandboxUnavailable):
                self.log.error("%s", err)
            raise
        finally:
            record.seconds = round(time.monotonic() - start, 3)
            record.execute_seconds = round(sum(c.seconds for c in record.cells), 3)
            records.write_record(CourseDirectory(config=self.config).root, record)
        return nb, resources
