"""Shared pytest set-up: nbgrader's tools on PATH, PyTorch's own quantization as an oracle, and the
lab grading tests (see tests/lab_grading.py)."""
import os
import sys
import warnings

import pytest

# nbgrader creates a gradebook by running `alembic`, installed beside this Python (the venv's bin/),
# which is not on PATH when the tests run as `.venv/bin/python -m pytest`.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

from tests.lab_grading import grade_submissions  # noqa: E402 (after PATH is set)

#: torch.ao.quantization (observers) and torch.quantize_per_tensor are deprecated: silence only that.
AO_DEPRECATIONS = ("ignore:.*deprecat:DeprecationWarning", "ignore:.*deprecat:UserWarning",
                   "ignore:.*deprecat:FutureWarning")


def pytest_configure(config):
    config.addinivalue_line("markers", "silence_ao: hide the deprecation warnings of torch.ao.quantization "
                                       "(the oracle of the test)")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("silence_ao"):
            item.add_marker(pytest.mark.filterwarnings(*AO_DEPRECATIONS))


@pytest.fixture(scope="session")
def ao():
    """``torch.ao.quantization``, PyTorch's own quantization: the oracle of many tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization

        return torch.ao.quantization


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
