"""Grading a whole class in parallel (qlib/grading/classroom.py) gives nbgrader's own grades.

A small class of lab 3 (a correct, a partly wrong, a crashing and an untouched
submission) is graded twice, in two copies of one course: by the serial
``nbgrader autograde`` and by ``python -m qlib.grading.course grade`` with two
workers. The scores must be identical, the gradebook must serve ``nbgrader
export``, and each submission must leave a record and a log. Then: the
command resumes (graded submissions are skipped, a resubmission is graded
again), the Dask path gives the same scores on a local cluster, and a worker
that fails costs only its own submission.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import nbformat
import pytest

from qlib.grading import classroom, records
from tests import nbgrader_course as course
from tests import test_lab03_grading as lab03

LAB = "lab03_linear_quantization"
#: What the reference answers earn: every autograded point, 0 for the written answer left blank.
POINTS = {**lab03.POINTS, **dict.fromkeys(lab03.WRITTEN, 0)}
TOTAL = sum(lab03.POINTS.values()) + sum(lab03.WRITTEN.values())

FLOOR = '''
def quantize(x, scale, zero_point, qmin, qmax):
    return torch.clamp(torch.floor(x / scale) + zero_point, qmin, qmax).to(torch.int64)
'''
EXIT = '''
import os
def dequantize(q, scale, zero_point):
    return (q - zero_point) * scale
os._exit(3)
'''


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    """Two identical courses with the same four submissions; one graded serially, one by the class command."""
    root = tmp_path_factory.mktemp("classroom")
    serial = course.make_course(root / "serial", LAB)
    released = course.read_notebook(course.notebook_path(serial, "labs", LAB))
    answers = course.solution_code(course.read_notebook(course.ROOT / "solutions" / LAB / f"{LAB}.ipynb"))
    subs = {"ada": course.fill(released, answers),
            "ben": course.fill(released, {**answers, "quantize": FLOOR}),
            "cho": course.fill(released, {**answers, "dequantize": EXIT}),
            "dan": released}
    parallel, dask = root / "parallel", root / "dask"
    shutil.copytree(serial, parallel)
    shutil.copytree(serial, dask)
    for student, nb in subs.items():
        course.submit(serial, LAB, student, nb)
    for student in ("ada", "cho"):  # the Dask cluster grades two: a right one, and one whose kernel dies
        course.submit(dask, LAB, student, subs[student])
    course.nbgrader("autograde", LAB, cwd=serial)
    start = time.monotonic()
    graded = course.grade_class(parallel, LAB, subs, 2)
    return {"serial": serial, "parallel": parallel, "dask": dask, "subs": subs, "released": released,
            "answers": answers, "scores": graded, "seconds": time.monotonic() - start}


def test_class_command_gives_the_serial_nbgrader_scores(klass):
    serial = course.scores(klass["serial"], LAB)
    assert klass["scores"] == serial, (klass["scores"], serial)
    assert serial["ada"] == POINTS
    assert serial["ben"]["test_quantize"] == 0 and sum(serial["ben"].values()) == sum(POINTS.values()) - 4
    assert sum(serial["dan"].values()) == 0


def test_gradebook_serves_export_and_autograded_notebooks(klass):
    parallel = klass["parallel"]
    course.nbgrader("export", "--to", "grades.csv", cwd=parallel)
    rows = (parallel / "grades.csv").read_text().splitlines()
    assert rows[0].startswith("assignment,duedate,timestamp,student_id")
    assert {r.split(",")[3] for r in rows[1:]} == {"ada", "ben", "cho", "dan"}
    for student in klass["subs"]:
        assert course.notebook_path(parallel, "autograded", LAB, student).exists()


def test_every_submission_leaves_a_record_and_a_log(klass):
    got = records.read_records(klass["parallel"], LAB)
    assert set(got) == {"ada", "ben", "cho", "dan"}
    assert all(r.outcome == "graded" and r.seconds > 0 for r in got.values())
    tests = {c.grade_id: c for c in got["ben"].cells if c.kind == "test"}
    assert tests["test_quantize"].status == "failed" and "quantize" in tests["test_quantize"].message
    assert tests["test_integer_range"].status == "passed" and not tests["test_integer_range"].message
    died = [c for c in got["cho"].cells if c.status == "died"]
    assert [c.grade_id for c in died] == ["dequantize"] and got["cho"].kernel_deaths == 1
    assert records.record_path(klass["parallel"], LAB, "cho", ".log").read_text().count("died") >= 1
    serial = records.read_records(klass["serial"], LAB)  # nbgrader autograde writes records too
    assert {s: [c.status for c in r.cells] for s, r in serial.items()} == \
           {s: [c.status for c in r.cells] for s, r in got.items()}


def _grade(course_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlib.grading.course", "grade", LAB, "--workers", "2", *extra],
                          cwd=course_dir, env=course.env(), capture_output=True, text=True)


def test_resumes_and_regrades_a_resubmission(klass):
    parallel = klass["parallel"]
    time.sleep(0.05)
    course.submit(parallel, LAB, "dan", klass["subs"]["ada"])  # dan resubmits the correct answers
    resumed = _grade(parallel)  # the three graded before are skipped
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 graded" in resumed.stdout and "3 already graded" in resumed.stdout, resumed.stdout
    assert course.scores(parallel, LAB)["dan"] == POINTS
    assert "grading lab03" in resumed.stderr and "slowest" in resumed.stderr  # the progress bar
    course.submit(parallel, LAB, "dan", klass["released"])
    assert course.grade_class(parallel, LAB, {}, 2, "--student", "dan", "--feedback")["dan"] == {k: 0 for k in POINTS}
    page = (parallel / "feedback" / "dan" / LAB / f"{LAB}.html").read_text()
    assert f"{LAB} (Score: 0.0 / {TOTAL:.1f})" in page, "the feedback shows the regrade's score"
    assert not (parallel / "feedback" / "ada").exists()  # only the regraded student's


def test_dask_cluster_gives_the_same_scores(klass):
    distributed = pytest.importorskip("distributed")
    dask_course = klass["dask"]
    os.environ.update({"OMP_NUM_THREADS": "1", "QLIB_GRADING_SECRET_FILE": str(course.SECRET)})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        result = classroom.grade_class(dask_course, LAB, scheduler=cluster.scheduler_address, progress=False)
    assert sorted(result.graded) == ["ada", "cho"] and not result.crashed
    got = course.scores(dask_course, LAB)
    assert got == {s: v for s, v in course.scores(klass["serial"], LAB).items() if s in ("ada", "cho")}
    workers = {r.worker for r in records.read_records(dask_course, LAB).values()}
    assert all(w.split(":")[1] != str(os.getpid()) for w in workers)  # executed by the cluster's workers


def test_a_failed_worker_costs_only_its_submission(klass, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(klass["parallel"], broken)
    nb = course.notebook_path(broken, "submitted", LAB, "ben")
    nbformat.write(klass["subs"]["ada"], nb)  # ben resubmits; his worker will fail
    before = course.scores(broken, LAB)["ben"]

    def results(jobs, workers):
        for job in jobs:
            yield classroom._crashed(job, MemoryError("out of memory"))

    monkeypatch.setattr(classroom, "_local_results", results)
    monkeypatch.setenv("QLIB_GRADING_SECRET_FILE", str(course.SECRET))
    result = classroom.grade_class(broken, LAB, workers=2, students=["ben"], progress=False, force=True)
    assert result.crashed == ["ben"] and not result.graded
    record = records.read_records(broken, LAB)["ben"]
    assert record.outcome == "crashed" and "out of memory" in record.error
    assert course.scores(broken, LAB)["ben"] == before  # the gradebook keeps the last real grading


def test_executing_a_broken_job_returns_a_crash_record():
    done = classroom.execute(classroom.Job(LAB, "eve", LAB, "{not a notebook", {}))
    assert done.outcome == "crashed" and done.error and "Traceback" in done.log
