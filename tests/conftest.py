"""Shared pytest set-up for the lab grading tests (see tests/lab_grading.py)."""
import pytest

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
