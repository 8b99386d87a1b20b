"""Shared pytest set-up: nbgrader's tools on PATH, and the lab grading tests (see tests/lab_grading.py)."""
import os
import sys

import pytest

# nbgrader creates a gradebook by running `alembic`, installed beside this Python (the venv's bin/),
# which is not on PATH when the tests run as `.venv/bin/python -m pytest`.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

from tests.lab_grading import grade_submissions


@pytest.fixture(scope="class")
def graded(request, tmp_path_factory):
    """Every submission of the requesting LabGradingTests class, autograded once."""
    return grade_submissions(request.cls, tmp_path_factory)


def pytest_generate_tests(metafunc):
    cls = metafunc.cls
    if cls is None:
        return
    for arg, attr in (("wrong", "WRONG"), ("cheat", "CHEATS"), ("explained", "EXPLAINED")):
        if arg in metafunc.fixturenames:
            values = getattr(cls, attr)
            metafunc.parametrize(arg, sorted(values) if isinstance(values, dict) else values,
                                 ids=None if isinstance(values, dict) else [v[0] for v in values])
