"""Hidden checks are fair for every seed, not only for one.

Grading draws each hidden seed from the course secret and the submission, so a hidden check
must accept the reference solution whatever the seed. Run in-process (no sandbox needed): the
instructor notebook's set-up and solution cells, then every test cell with seeds it has never
been tuned on. (This found a wrong convolution in qlib's fast integer route and a degenerate
lab 6 layer that a fixed seed had hidden.)
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
import re

import pytest

from qlib.grading import sealed
from tests import nbgrader_course as course

LABS = sorted(p.name for p in (course.ROOT / "solutions").iterdir() if p.is_dir())
SEEDS = (7, 1_000_003, 2**31 - 2, 614_668_284)  # the last: a 16-bit near tie that float32 scales round apart


@functools.lru_cache(maxsize=1)
def _notebook(lab: str):
    """(namespace after the set-up and solution cells, [(grade_id, test cell source)])."""
    import matplotlib

    matplotlib.use("agg")
    nb = course.read_notebook(course.ROOT / "solutions" / lab / f"{lab}.ipynb")
    namespace, tests = {}, []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code":
            continue
        if sealed.is_test_cell(cell):
            tests.append((meta["grade_id"], cell.source))
        elif meta.get("solution") or meta.get("locked"):  # answers may use what an experiment cell computed
            with contextlib.redirect_stdout(io.StringIO()):
                exec(re.sub(r"### (BEGIN|END) SOLUTION", "", cell.source), namespace)
    return namespace, tests


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lab", LABS)
def test_reference_passes_every_hidden_check_whatever_the_seed(lab, seed):
    namespace, tests = _notebook(lab)
    assert tests
    checks = sealed.lab_module(lab)
    for grade_id, source in tests:
        drawn = [name for name in re.findall(r"grader\.(check_\w+)\(", source)
                 if "seed" in inspect.signature(getattr(checks, name)).parameters]
        # a check that draws hidden cases must get the grader's seed (a question's check draws none)
        assert not drawn or "HIDDEN_SEED" in source, f"{grade_id}: the hidden test must take the grader's seed"
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(source, {**namespace, "HIDDEN_SEED": seed})
            except AssertionError as failure:
                pytest.fail(f"{lab} {grade_id} seed {seed}: {failure}")
