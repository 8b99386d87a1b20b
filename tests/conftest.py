"""Shared pytest set-up: nbgrader's tools on PATH, PyTorch's own quantization as an oracle, and the
lab grading tests (see tests/lab_grading.py)."""
import os
import sys
import warnings

import pytest

# nbgrader creates a gradebook by running `alembic`, installed beside this Python (the venv's bin/),
# which is not on PATH when the tests run as `.venv/bin/python -m pytest`.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

from tests.lab_grading import CHOICE_CHEATS, STANDARD_CHEATS, GradingRuns, LabGradingTests  # noqa: E402 (after PATH is set)

#: torch.ao.quantization (observers) and torch.quantize_per_tensor are deprecated: silence only that.
AO_DEPRECATIONS = ("ignore:.*deprecat:DeprecationWarning", "ignore:.*deprecat:UserWarning",
                   "ignore:.*deprecat:FutureWarning")


def pytest_configure(config):
    config.addinivalue_line("markers", "silence_ao: hide the deprecation warnings of torch.ao.quantization "
                                       "(the oracle of the test)")


def _grades_a_lab(item) -> bool:
    return item.cls is not None and issubclass(item.cls, LabGradingTests)


def _reads_the_site(item) -> bool:
    return item.module.__name__ == "tests.test_book"


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("silence_ao"):
            item.add_marker(pytest.mark.filterwarnings(*AO_DEPRECATIONS))
    # the site's tests, then the lab grading classes, last: the session's other tests run while the site
    # is built and the labs are graded in the background
    site = [item for item in items if _reads_the_site(item)]
    labs = [item for item in items if _grades_a_lab(item)]
    items[:] = [item for item in items if not _reads_the_site(item) and not _grades_a_lab(item)] + site + labs


@pytest.fixture(scope="session", autouse=True)
def book_build(request, tmp_path_factory):
    """The site's build, started with the session's first test when the session reads the site:
    (process, log) or None (no site test, or a site built beforehand: see tests/test_book.py)."""
    if not any(_reads_the_site(item) for item in request.session.items):
        yield None
        return
    from tests.test_book import start_build

    log = tmp_path_factory.mktemp("site") / "jupyter-book.log"
    process = start_build(log)
    yield None if process is None else (process, log)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def ao():
    """``torch.ao.quantization``, PyTorch's own quantization: the oracle of many tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization

        return torch.ao.quantization


@pytest.fixture(scope="session", autouse=True)
def grading_runs(request, tmp_path_factory):
    """The grading runs of the session's lab grading classes, started in the background with its first test.

    They take minutes of two cores; the session's other tests (collected first, see
    ``pytest_collection_modifyitems``) run beside them, one lab graded after the other, and each lab
    grading class waits for its own.
    """
    classes = list(dict.fromkeys(item.cls for item in request.session.items if _grades_a_lab(item)))
    runs = GradingRuns(classes, tmp_path_factory)
    yield runs
    runs.close()


@pytest.fixture(scope="class")
def graded(request, grading_runs):
    """Every submission of the requesting LabGradingTests class, graded once (a tests.lab_grading.Graded)."""
    return grading_runs.result(request.cls)


def pytest_generate_tests(metafunc):
    cls = metafunc.cls
    if cls is None:
        return
    if "wrong" in metafunc.fixturenames:
        metafunc.parametrize("wrong", sorted(cls.WRONG))
    if "cheat" in metafunc.fixturenames:
        choice = CHOICE_CHEATS if cls.CHOICE else ()
        metafunc.parametrize("cheat", sorted([*STANDARD_CHEATS, *choice, *cls.CHEATS]))
    if "partial" in metafunc.fixturenames:
        metafunc.parametrize("partial", sorted(cls.PARTIAL))
