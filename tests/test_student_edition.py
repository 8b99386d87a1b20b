"""The student edition holds what students need and nothing of the grader's.

One export (without the website, which takes minutes to build) is inspected from outside: its files,
the text of its lab checks, and the exported ``qlib`` run on its own (``PYTHONPATH`` pointing at the
export, never at the course) on a lab notebook filled with the reference answers and one wrong one.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from qlib.grading import edition as edition_module
from qlib.grading.edition import export_student_edition
from tests import nbgrader_course as course

ROOT = course.ROOT
LABS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
#: Functions and tables that draw or hold hidden cases in the course's lab checks.
HIDDEN_GENERATORS = ("_random_ranges", "_quantize_cases", "_per_channel_cases", "_percentile_cases", "_mse_cases",
                     "_histogram_cases", "_kl_cases", "_multiplier_cases", "_requantize_cases", "_ste_hidden",
                     "_lsq_hidden", "FINETUNE_HIDDEN", "SMALL_FORMATS")


@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("edition") / "quantization-course"
    export_student_edition(ROOT, dest, build_site=False, log=lambda *args: None)
    return dest


def student_env(edition: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(edition), "QLIB_GRADING_UNSANDBOXED": "1", "OMP_NUM_THREADS": "1"}


def text_files(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix not in (".pt",):
            yield path, path.read_bytes().decode(errors="replace")


def test_the_labs_the_book_and_the_environment_are_there(edition):
    for lab in LABS:
        assert (edition / "labs" / lab / f"{lab}.ipynb").is_file(), lab
    for name in ("book/intro.md", "book/03_linear_quantization.md", "_config.yml", "_toc.yml", "requirements.txt",
                 "pyproject.toml", "README.md", ".gitignore", "qlib/__init__.py", "qlib/linear.py",
                 "qlib/checkpoints/digits_cnn.pt", "qlib/grading/check.py", "qlib/grading/sealed.py"):
        assert (edition / name).is_file(), name
    assert (edition / "requirements.txt").read_text() == (ROOT / "requirements.txt").read_text()
    assert "tool.pytest" not in (edition / "pyproject.toml").read_text()  # there is no tests/ to point at
    assert ".venv/" in (edition / ".gitignore").read_text().splitlines()


def test_no_solutions_tests_gradebook_or_instructor_settings(edition):
    top = {p.name for p in edition.iterdir()}
    assert top == {"book", "labs", "qlib", "_config.yml", "_toc.yml", "requirements.txt", "pyproject.toml",
                   "README.md", ".gitignore"}, top
    names = {p.name for p in edition.rglob("*")}
    for forbidden in ("solutions", "tests", "nbgrader_config.py", "gradebook.db", "submitted", "autograded",
                      "feedback", "grading_records", "grades.csv", "student_readme.md", "templates"):
        assert forbidden not in names, forbidden


def test_no_secret_and_no_instructor_module(edition):
    grading = {p.stem for p in (edition / "qlib" / "grading").glob("*.py")}
    for module in ("secret", "course", "classroom", "lms", "report", "integrity", "edition"):
        assert module not in grading, module
    assert {"check", "sealed", "sandbox", "kernel", "kernel_side", "remote", "wire", "harness"} <= grading
    for path, text in text_files(edition / "qlib"):
        for word in ("course_secret", "hidden_seed(", "QLIB_GRADING_SECRET_FILE", "class RebuildFromSource",
                     "class SealedExecute", "def seeds_of"):
            assert word not in text, f"{path.relative_to(edition)} mentions {word}"
        assert not re.search(r"^\s*(from qlib\.grading import .*\bsecret\b|import qlib\.grading\.secret)", text,
                             re.M), path


def test_no_hidden_test_and_no_solution_anywhere(edition):
    for path, text in text_files(edition):
        where = path.relative_to(edition)
        if path.suffix == ".ipynb":
            for cell in json.loads(text)["cells"]:
                source = "".join(cell["source"])
                for word in ("BEGIN HIDDEN TESTS", "BEGIN SOLUTION", "HIDDEN_SEED"):
                    assert word not in source, f"{where}: {word}"
        for line in text.splitlines():
            assert not line.lstrip().startswith(("### BEGIN HIDDEN TESTS", "### BEGIN SOLUTION")), where
    for lab in LABS:  # the released notebooks, whose every answer cell is a stub
        exported = course.read_notebook(edition / "labs" / lab / f"{lab}.ipynb")
        released = course.read_notebook(ROOT / "labs" / lab / f"{lab}.ipynb")
        assert [c.source for c in exported.cells] == [c.source for c in released.cells], lab
        answers = [c for c in exported.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert answers and all("raise NotImplementedError()" in c.source or c.source == "YOUR ANSWER HERE"
                               for c in answers), lab


def test_the_lab_checks_keep_no_hidden_case_generator(edition):
    for lab in LABS:
        module = lab[:5]
        original = (ROOT / "qlib" / "grading" / f"{module}.py").read_text()
        text = (edition / "qlib" / "grading" / f"{module}.py").read_text()
        checks = re.sub(r"\ndef _visible_cases_only\(.*?\n\n", "\n", text, flags=re.S)  # the one refusal
        assert "seed is None" in original and "seed is None" not in checks and "seed is not None" not in checks, module
        assert "HIDDEN_CASES = False" in text, module
        assert len(text) < len(original) - 1000, module  # the hidden cases took room
        for name in HIDDEN_GENERATORS:
            assert not re.search(rf"\b{name}\b", text), f"{module}: {name}"
    assert any(re.search(rf"\b{name}\b", (ROOT / "qlib" / "grading" / f"{lab[:5]}.py").read_text())
               for name in HIDDEN_GENERATORS for lab in LABS)  # the list names real generators


SEEDED_CALLS = '''
import inspect, importlib, json, qlib
out = {"qlib": qlib.__file__, "refused": [], "ran": []}
for lab in LABS:
    module = importlib.import_module("qlib.grading." + lab[:5])
    for name, check in inspect.getmembers(module, inspect.isfunction):
        if not name.startswith("check_") or check.__module__ != module.__name__:
            continue
        if "seed" not in inspect.signature(check).parameters:
            continue  # a question or a design: no hidden cases to draw
        n = sum(1 for p in inspect.signature(check).parameters.values() if p.default is inspect.Parameter.empty)
        try:
            check(*[lambda *a, **k: None] * n, seed=12345)
            out["ran"].append(name)
        except RuntimeError as err:
            out["refused"].append((name, str(err)))
print(json.dumps(out))
'''


def test_a_check_called_with_a_seed_fails_clearly(edition):
    proc = subprocess.run([sys.executable, "-c", f"LABS = {LABS!r}" + SEEDED_CALLS], cwd=edition.parent,
                          env=student_env(edition), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert Path(out["qlib"]).resolve().is_relative_to(edition.resolve()), out["qlib"]
    assert not out["ran"] and len(out["refused"]) >= 30, out
    for name, message in out["refused"]:
        assert "hidden cases are drawn only by the course's grader" in message and f"Call {name} without" in message


def test_the_student_readme_and_every_page_name_the_student_repository(edition):
    readme = (edition / "README.md").read_text()
    assert f"git clone {REPOSITORY}" in readme
    assert "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt" in readme
    assert "python -m qlib.grading.check" in readme and "hidden" in readme and "{{" not in readme
    for lab in LABS:
        assert f"`{lab}`" in readme, lab
        intro = course.read_notebook(edition / "labs" / lab / f"{lab}.ipynb").cells[0].source
        assert f"git clone {REPOSITORY}" in intro and ".venv/bin/pip install -r requirements.txt" in intro, lab
        assert f"python -m qlib.grading.check {lab}.ipynb" in intro, lab
    site_intro = (edition / "book" / "intro.md").read_text()
    assert f"git clone {REPOSITORY}" in site_intro and "pip install -r requirements.txt" in site_intro


def test_the_exported_qlib_checks_a_lab_on_its_own(edition, tmp_path):
    lab = "lab03_linear_quantization"
    released = course.read_notebook(edition / "labs" / lab / f"{lab}.ipynb")
    answers = course.solution_code(course.read_notebook(ROOT / "solutions" / lab / f"{lab}.ipynb"))
    wrong = "def integer_range(bits, signed=True, narrow=False):\n    return -(2 ** (bits - 1)), 2 ** (bits - 1)\n"
    nbformat.write(course.fill(released, {**answers, "integer_range": wrong}), tmp_path / f"{lab}.ipynb")
    proc = subprocess.run([sys.executable, "-m", "qlib.grading.check", f"{lab}.ipynb"], cwd=tmp_path,
                          env=student_env(edition), capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "(visible cases only)" in out, out + proc.stderr[-3000:]
    assert "[FAIL] test_integer_range" in out and "expected (-128, 127), got (-128, 128)" in out, out
    for task in ("asymmetric_qparams", "symmetric_qparams", "quantize", "dequantize", "quantize_per_channel",
                 "fake_quantize_weights"):
        assert f"[pass] test_{task} " in out, out
    from tests.test_lab03_grading import POINTS

    autograded = sum(POINTS.values())  # the check counts what is graded automatically; integer_range's 2 are lost
    assert f"{autograded - 2} of {autograded} points" in out and proc.returncode == 1, out


def test_the_command_refuses_a_folder_in_use_unless_forced(tmp_path, capsys):
    commands = argparse.ArgumentParser().add_subparsers()
    edition_module.register(commands)
    parser = commands._name_parser_map["student-edition"]

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args.run(args)

    dest = tmp_path / "student-repo"
    (dest / ".git").mkdir(parents=True)
    (dest / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (dest / "old.txt").write_text("from an earlier export")
    assert run(str(dest), "--no-site", "--course", str(ROOT)) == 1
    assert "--force" in capsys.readouterr().err and (dest / "old.txt").exists()
    assert run(str(dest), "--no-site", "--course", str(ROOT), "--force") == 0
    assert not (dest / "old.txt").exists() and (dest / ".git" / "HEAD").exists()
    assert (dest / "labs" / LABS[0] / f"{LABS[0]}.ipynb").exists()
