"""Run nbgrader for real on made-up submissions, in a temporary copy of the course.

Used by the tests of every lab's grading: build a student's notebook from the
released one, autograde a batch of them with the `nbgrader` command, and read
the scores back from the gradebook.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = Path(tempfile.gettempdir()) / "qlib-test-course-secret"


def env() -> dict:
    """Environment for nbgrader: the venv's bin/ on PATH (nbgrader runs alembic from there)."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["OMP_NUM_THREADS"] = "1"  # two graders share two cores; more threads only fight
    e["QLIB_GRADING_SECRET_FILE"] = str(SECRET)  # the course secret of the test courses
    return e


def nbgrader(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGS`` in course directory ``cwd``; raise with its output if it fails."""
    proc = subprocess.run([str(BIN / "nbgrader"), *args], cwd=cwd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


_GENERATED: dict[tuple[str, str], Path] = {}  # (lab, digest of its sources) -> a generated course, for copying


def _sources_digest(lab: str) -> str:
    digest = hashlib.sha256((ROOT / "nbgrader_config.py").read_bytes())
    for path in sorted((ROOT / "solutions" / lab).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def make_course(tmp: Path, lab: str) -> Path:
    """A fresh course directory holding the lab's source, with the student version generated.

    ``nbgrader generate_assignment`` runs once per lab and test session (it takes seconds); each course
    is a copy of that one, made again whenever the lab's sources change.
    """
    key = (lab, _sources_digest(lab))
    if key not in _GENERATED:
        generated = Path(tempfile.mkdtemp(prefix=f"qlib-test-{lab}-"))
        atexit.register(shutil.rmtree, generated, ignore_errors=True)
        shutil.copy(ROOT / "nbgrader_config.py", generated / "nbgrader_config.py")
        shutil.copytree(ROOT / "solutions" / lab, generated / "solutions" / lab)
        nbgrader("generate_assignment", lab, "--force", cwd=generated)
        _GENERATED[key] = generated
    shutil.copytree(_GENERATED[key], tmp, dirs_exist_ok=True)
    return tmp


def notebook_path(course: Path, step: str, lab: str, student: str | None = None) -> Path:
    parts = [course, step] + ([student] if student else []) + [lab, f"{lab}.ipynb"]
    return Path(*parts)


def read_notebook(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def solution_code(source_nb: nbformat.NotebookNode) -> dict[str, str]:
    """grade_id -> the reference answer of each solution cell, without the nbgrader markers."""
    answers = {}
    for cell in source_nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            answers[meta["grade_id"]] = re.sub(r"^[ \t]*### (BEGIN|END) SOLUTION\n?", "", cell.source, flags=re.M)
    return answers


def written_answers(source_nb: nbformat.NotebookNode) -> dict[str, str]:
    """grade_id -> the reference text of each written answer (a markdown solution cell graded by a person)."""
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in source_nb.cells
            if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("solution")}


def fill(released: nbformat.NotebookNode, answers: dict[str, str]) -> nbformat.NotebookNode:
    """A copy of the released notebook with solution cells replaced by ``answers`` (by grade_id)."""
    nb = json.loads(json.dumps(released))
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers and cell.metadata["nbgrader"].get("solution"):
            cell.source = answers[gid]
    return nb


def submit(course: Path, lab: str, student: str, nb: nbformat.NotebookNode) -> None:
    path = notebook_path(course, "submitted", lab, student)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _grades_by_student(course: Path, lab: str, value) -> dict:
    """student -> {grade_id: value(grade)} for every graded submission of ``lab`` in the gradebook."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in gb.students:
            try:
                sub = gb.find_submission_notebook(lab, lab, student.id)
            except Exception:
                continue
            out[student.id] = {g.name: value(g) for g in sub.grades}
    return out


def scores(course: Path, lab: str) -> dict[str, dict[str, float]]:
    """student -> {grade_id: score} from the gradebook after autograding."""
    return _grades_by_student(course, lab, lambda grade: grade.score)


def waiting_for_a_person(course: Path, lab: str) -> dict[str, set[str]]:
    """student -> the grade ids nbgrader marks ``needs_manual_grade`` after autograding."""
    flags = _grades_by_student(course, lab, lambda grade: grade.needs_manual_grade)
    return {student: {gid for gid, waiting in grades.items() if waiting} for student, grades in flags.items()}


def autograde(course: Path, lab: str, submissions: dict[str, nbformat.NotebookNode], workers: int = 2,
              force: bool = True, files: dict[str, dict[str, str]] | None = None):
    """Autograde every submission; returns ``(scores, course_dirs)``.

    Submissions are split over ``workers`` course copies graded in parallel
    (one gradebook each, so SQLite is never shared). ``files`` gives, per
    student, files submitted beside the notebook (relative path -> text).
    """
    names = sorted(submissions)
    shards = [names[i::workers] for i in range(workers)]
    courses = [course] + [course.parent / f"{course.name}_{i}" for i in range(1, workers)]
    for c in courses[1:]:  # copied before any submission, so that each copy grades its own shard only
        shutil.copytree(course, c, dirs_exist_ok=True)
    for c, shard in zip(courses, shards):
        for student in shard:
            submit(c, lab, student, submissions[student])
            for rel, text in (files or {}).get(student, {}).items():
                path = notebook_path(c, "submitted", lab, student).parent / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)

    def run(c: Path):
        nbgrader("autograde", lab, *(["--force"] if force else []), cwd=c)
        return scores(c, lab)

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(run, courses))
    merged: dict[str, dict[str, float]] = {}
    for r in results:
        merged.update(r)
    return merged, {s: courses[i] for i, shard in enumerate(shards) for s in shard}


def grade_class(course: Path, lab: str, submissions: dict[str, nbformat.NotebookNode], workers: int = 2,
                *extra: str) -> dict[str, dict[str, float]]:
    """Grade every submission with the class command (``python -m qlib.grading.course grade``)."""
    for student, nb in submissions.items():
        submit(course, lab, student, nb)
    proc = subprocess.run([sys.executable, "-m", "qlib.grading.course", "grade", lab, "--workers", str(workers),
                           "--quiet", *extra], cwd=course, env=env(), capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"grade failed (exit status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return scores(course, lab)


def tamper(nb: nbformat.NotebookNode, grade_id: str, how: str) -> nbformat.NotebookNode:
    """Edit (``how="edit"``) or delete (``"delete"``) the cell ``grade_id`` of a submission."""
    for i, cell in enumerate(nb.cells):
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            if how == "edit":
                cell.source = "print('all tests passed')"
            else:
                del nb.cells[i]
            return nb
    raise AssertionError(f"no cell {grade_id}")


def cell_output(course_dir: Path, lab: str, student: str, grade_id: str) -> str:
    """Text of everything the cell ``grade_id`` printed when ``student``'s notebook was autograded."""
    nb = read_notebook(notebook_path(course_dir, "autograded", lab, student))
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return "\n".join(str(o.get("text", "")) + str(o.get("evalue", "")) + "".join(o.get("traceback", []))
                             for o in cell.get("outputs", []))
    raise AssertionError(f"no cell {grade_id}")
