"""Grade a whole class in parallel: ``python -m qlib.grading.course grade LAB``.

Workers execute, one coordinator writes. For each submission the coordinator
(this process, in the course directory)

1. rebuilds the submitted notebook on the source notebook
   (:func:`qlib.grading.sealed.rebuild`) and draws its hidden seeds from the
   course secret (:func:`qlib.grading.sealed.seeds_of`);
2. hands a :class:`Job` (the rebuilt notebook and its seeds: data only) to a
   worker, which runs it in its own sandbox exactly as ``nbgrader autograde``
   would (:func:`qlib.grading.sealed.run_notebook`) and returns an
   :class:`Executed` record (the executed notebook, each cell's status and
   time). Workers need ``qlib`` and bubblewrap; they never see the course
   directory, the gradebook or the secret;
3. as each record comes back, runs nbgrader's own ``autograde`` converter
   for that student with the execution step replaced by the worker's result
   (:class:`UseExecutedCells`), so nbgrader itself writes ``autograded/``,
   the gradebook (one writer: no SQLite lock fights), timestamps and late
   penalties; ``nbgrader export`` and feedback work as before;
4. writes the grading record and log of the submission
   (:mod:`qlib.grading.records`).

Workers are local processes (``--workers N``, default: one per core), or, with
``--scheduler tcp://host:8786``, the workers of a Dask distributed cluster.
Grading is resumable: a submission whose autograded notebook is newer than the
submitted one is skipped unless ``--force``. Scores are identical to
``nbgrader autograde``'s: the same rebuild, seeds, sandbox and checks.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor

from qlib.grading import records, sandbox, sealed, secret
from qlib.grading.records import CellRecord, GradingRecord


# --- the worker's side: data in, data out ----------------------------------------------------------

@dataclass
class Job:
    """One submission to execute: the rebuilt notebook (JSON text) and its hidden seeds."""

    lab: str
    student: str
    notebook: str
    notebook_json: str
    seeds: dict[str, int]
    timeout: float = 120.0


@dataclass
class Executed:
    """What a worker returns: the executed notebook and what happened in each cell."""

    lab: str
    student: str
    notebook: str
    outcome: str  # "graded" or "crashed"
    notebook_json: str = ""
    cells: list[CellRecord] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    log: str = ""
    worker: str = ""


def execute(job: Job) -> Executed:
    """Run ``job``'s notebook in a fresh sandbox; never raises (a failure is an ``Executed`` too)."""
    start, lines = time.monotonic(), []
    done = Executed(job.lab, job.student, job.notebook, "graded", worker=records.worker_name())
    try:
        nb = nbformat.reads(job.notebook_json, as_version=4)
        done.cells = sealed.run_notebook(nb, sealed.lab_module(job.lab), job.seeds.get, job.timeout,
                                         log=lines.append)
        done.notebook_json = nbformat.writes(nb)
    except Exception as err:  # noqa: BLE001 (reported to the coordinator as data)
        done.outcome, done.error = "crashed", f"{type(err).__name__}: {err}"
        lines.append(traceback.format_exc())
    done.seconds = round(time.monotonic() - start, 3)
    done.log = "\n".join(lines)
    return done


def _one_thread_per_worker() -> None:
    """Worker start-up: each worker owns one core, so its grader runs torch on one thread."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _prepare_cluster_worker() -> str:
    """A Dask worker's start-up: one thread for torch, and a sandbox it can run (or a clear error)."""
    _one_thread_per_worker()
    if not sandbox.unsandboxed():
        sandbox.require_bubblewrap()
    return records.worker_name()


# --- nbgrader's converter, fed with a worker's result ----------------------------------------------

_EXECUTED: dict[tuple[str, str, str], Executed] = {}


class UseExecutedCells(NbGraderPreprocessor):
    """Autograde step in place of SealedExecute: the outputs a worker computed for this notebook.

    The worker executed the same rebuild of the same submission; a cell that
    does not match (which would mean the submission changed meanwhile) stops
    the grading of this submission instead of scoring the wrong notebook.
    """

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        executed = _EXECUTED[(info["assignment"], info["student"], info["notebook"])]
        done = nbformat.reads(executed.notebook_json, as_version=4)
        if [c.source for c in done.cells] != [c.source for c in nb.cells]:
            raise RuntimeError(f"{info['student']}: the submission changed while it was graded; grade it again")
        for cell, ran in zip(nb.cells, done.cells):
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = ran.outputs, ran.get("execution_count")
        return nb, resources


def course_config(root: Path):
    """The course's nbgrader configuration, with the execution step taken from the workers."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    config.CourseDirectory.root = str(root)
    steps = list(config.Autograde.autograde_preprocessors)
    config.Autograde.autograde_preprocessors = [UseExecutedCells if s is sealed.SealedExecute else s for s in steps]
    return config


class Gradebook:
    """The coordinator's handle on nbgrader: the one writer of the gradebook and ``autograded/``."""

    def __init__(self, root: Path):
        from nbgrader.apps.api import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        self.root = Path(root).resolve()
        self.config = course_config(self.root)
        with contextlib.chdir(self.root):
            self.coursedir = CourseDirectory(config=self.config)
            self.api = NbGraderAPI(coursedir=self.coursedir, config=self.config)

    def submitted(self, lab: str) -> dict[str, Path]:
        """student -> submitted notebook of ``lab``."""
        folder = self.root / self.coursedir.submitted_directory
        return {p.parent.parent.name: p for p in sorted(folder.glob(f"*/{lab}/{lab}.ipynb"))}

    def autograded(self, lab: str, student: str) -> Path:
        return self.root / self.coursedir.autograded_directory / student / lab / f"{lab}.ipynb"

    def is_graded(self, lab: str, student: str, submitted: Path) -> bool:
        """Already graded, from this very submission (nbgrader's own test: file times)."""
        done = self.autograded(lab, student)
        return (done.exists() and done.stat().st_mtime >= submitted.stat().st_mtime
                and records.record_path(self.root, lab, student).exists())

    def source(self, lab: str) -> nbformat.NotebookNode:
        return nbformat.read(self.root / self.coursedir.source_directory / lab / f"{lab}.ipynb", as_version=4)

    def save(self, executed: Executed) -> dict:
        """nbgrader's autograde of one student, with the worker's outputs; returns its result dict."""
        key = (executed.lab, executed.student, executed.notebook)
        _EXECUTED[key] = executed
        try:
            with contextlib.chdir(self.root):
                return self.api.autograde(executed.lab, executed.student, force=True, create=True)
        finally:
            del _EXECUTED[key]


# --- the coordinator -------------------------------------------------------------------------------

def make_jobs(book: Gradebook, lab: str, force: bool = False, students=None,
              timeout: float | None = None) -> tuple[list[Job], list[str]]:
    """The jobs to run and the students skipped as already graded.

    ``timeout`` (seconds per cell) defaults to the course's ``SealedExecute.timeout``.
    """
    source, key = book.source(lab), secret.course_secret()
    timeout = timeout or book.config.SealedExecute.get("timeout", sealed.SealedExecute.timeout.default_value)
    jobs, skipped = [], []
    for student, path in book.submitted(lab).items():
        if students and student not in students:
            continue
        if not force and book.is_graded(lab, student, path):
            skipped.append(student)
            continue
        nb = sealed.rebuild(source, nbformat.read(path, as_version=4))
        jobs.append(Job(lab, student, lab, nbformat.writes(nb), sealed.seeds_of(nb, lab, student, key), timeout))
    return jobs, skipped


def _crashed(job: Job, err: BaseException) -> Executed:
    """The record of a job whose worker failed (it died, or the cluster lost it)."""
    return Executed(job.lab, job.student, job.notebook, "crashed", error=f"the worker failed: {type(err).__name__}: {err}")


def _local_results(jobs: list[Job], workers: int):
    """Yield each job's Executed as it finishes, from local worker processes."""
    context = get_context("forkserver")
    context.set_forkserver_preload(["qlib.grading.classroom"])  # each worker starts with torch and qlib loaded
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread_per_worker) as pool:
        futures = {pool.submit(execute, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # noqa: BLE001 (a broken worker costs its submissions, not the class)
                yield _crashed(futures[future], err)


def _dask_results(jobs: list[Job], scheduler: str):
    """Yield each job's Executed as it finishes, from the workers of a Dask cluster."""
    from distributed import Client, as_completed as dask_completed

    with Client(scheduler) as client:
        client.run(_prepare_cluster_worker)  # raises SandboxUnavailable, naming the worker, before any job
        futures = {client.submit(execute, job, key=f"grade-{job.lab}-{job.student}-{uuid.uuid4().hex[:8]}", pure=False): job
                   for job in jobs}
        for future in dask_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # noqa: BLE001
                yield _crashed(futures[future], err)


def _record(executed: Executed, saved: dict | None, submitted_at: str | None) -> GradingRecord:
    record = GradingRecord(executed.lab, executed.student, executed.notebook, executed.outcome, executed.seconds,
                           round(sum(c.seconds for c in executed.cells), 3), executed.cells, executed.error,
                           submitted_at, records.now(), executed.worker)
    if saved is not None and not saved.get("success"):
        record.outcome = "crashed"
        record.error = record.error or (saved.get("error") or "nbgrader could not save the grades").strip()[-2000:]
    return record


def _submitted_at(book: Gradebook, lab: str, student: str) -> str | None:
    stamp = book.root / book.coursedir.submitted_directory / student / lab / "timestamp.txt"
    return stamp.read_text().strip() if stamp.exists() else None


@dataclass
class ClassResult:
    graded: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def grade_class(root: Path, lab: str, workers: int | None = None, scheduler: str | None = None,
                force: bool = False, students=None, timeout: float | None = None, progress: bool = True,
                feedback: bool = False) -> ClassResult:
    """Grade every submission of ``lab`` in course directory ``root``; see the module docstring."""
    from tqdm import tqdm

    start = time.monotonic()
    book = Gradebook(root)
    if sandbox.unsandboxed():
        sandbox.warn_unsandboxed()
    elif scheduler is None:
        sandbox.require_bubblewrap()  # stop before any job (a Dask worker checks its own)
    jobs, skipped = make_jobs(book, lab, force, students, timeout)
    result = ClassResult(skipped=skipped)
    results = (_dask_results(jobs, scheduler) if scheduler
               else _local_results(jobs, workers or os.cpu_count() or 1)) if jobs else iter(())
    slowest = ("", 0.0)
    with tqdm(total=len(jobs), desc=f"grading {lab}", unit="submission", disable=not progress,
              file=sys.stderr) as bar:
        for executed in results:
            saved = book.save(executed) if executed.outcome == "graded" else None
            record = _record(executed, saved, _submitted_at(book, lab, executed.student))
            log = "\n".join(x for x in (executed.log, (saved or {}).get("log", ""), record.error) if x)
            records.write_record(book.root, record, log)
            (result.graded if record.outcome == "graded" else result.crashed).append(executed.student)
            slowest = max(slowest, (executed.student, executed.seconds), key=lambda s: s[1])
            bar.update()
            bar.set_postfix_str(f"failed {len(result.crashed)}, remaining {bar.total - bar.n}, "
                                f"slowest {slowest[0]} {slowest[1]:.0f} s")
    if feedback and result.graded:
        from qlib.grading import lms

        lms.regenerate_feedback(book.root, lab, result.graded)
    result.seconds = round(time.monotonic() - start, 3)
    return result


# --- the command -----------------------------------------------------------------------------------

def register(commands) -> None:
    cmd = commands.add_parser("grade", help="grade a whole class in parallel",
                              description=__doc__.split("\n\n")[0])
    cmd.add_argument("lab", help="the lab to grade, e.g. lab03_linear_quantization")
    cmd.add_argument("--course", type=Path, default=Path("."), help="course directory (default: here)")
    cmd.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    cmd.add_argument("--scheduler", default=None,
                     help="address of a Dask scheduler (tcp://host:8786): grade on its workers instead")
    cmd.add_argument("--force", action="store_true", help="grade again the submissions already graded")
    cmd.add_argument("--student", action="append", default=None, help="grade only this student (repeatable)")
    cmd.add_argument("--timeout", type=float, default=None,
                     help="seconds each cell may run (default: the course's SealedExecute.timeout, 120)")
    cmd.add_argument("--feedback", action="store_true", help="regenerate the feedback of every graded student")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(run=_run)


def _run(args) -> int:
    result = grade_class(args.course, args.lab, args.workers, args.scheduler, args.force, args.student,
                         args.timeout, progress=not args.quiet, feedback=args.feedback)
    print(f"{args.lab}: {len(result.graded)} graded, {len(result.crashed)} could not be graded, "
          f"{len(result.skipped)} already graded (skipped; --force grades them again), {result.seconds:.0f} s")
    for student in result.crashed:
        print(f"  could not grade {student}: see {records.record_path(args.course, args.lab, student, '.log')}")
    return 1 if result.crashed else 0
