"""Red team: a determined student attacks the sealed grader, through the real `nbgrader autograde`.

Every attacker knows qlib, the grading code and this repository (including the path of the test
course, which the attacks below hard-code). Each attack submission answers one task wrongly and
attacks the grader to get its points anyway; every other task is answered correctly. The attack
must earn nothing for its task, the correct tasks keep their points, a student graded before the
attackers keeps byte-identical files and gradebook rows, no course file changes, no process of a
sandbox outlives grading, and nothing reaches a server on the grader's loopback.
"""
from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import nbformat
import pytest

from qlib.grading import sandbox
from qlib.grading.kernel import SandboxedKernel
from tests import nbgrader_course as course
from tests.test_lab03_grading import POINTS, WRITTEN

LAB = "lab03_linear_quantization"
WRONG_QUANTIZE = "\ndef quantize(x, scale, zero_point, qmin, qmax):\n    return x\n"
WRONG_DEQUANTIZE = "\ndef dequantize(q, scale, zero_point):\n    return q\n"


#: How an attack searches the whole file system the sandbox shows, for the files whose path ends with
#: ``ending``: for three seconds at most, then it attacks what it found (a search of every path,
#: /proc included, would use up the cell's time before the attack began).
SEARCH = '''
import os, time

def search(ending, seconds=3.0):
    found, start = [], time.monotonic()
    for top, dirs, files in os.walk("/"):
        if top == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        found += [os.path.join(top, f) for f in files if os.path.join(top, f).endswith(ending)]
        if time.monotonic() - start > seconds:
            break
    return found
'''


# Each entry: name -> (how the submission differs from the reference answers, the task it attacks).
# "cells": solution cell id -> source; "add": (after grade id, source, nbgrader metadata or None);
# "edit": grade id -> (new source, metadata changes); "files": path beside the notebook -> text.
ATTACKS = {
    "checks_replaced_through_sys_modules": ({"cells": {"quantize": '''
import sys
lab = sys.modules["qlib.grading.lab03"]
lab.check_quantize = lambda *a, **k: print("quantize: hidden checks passed")
sys.modules["qlib.grading.harness"].fail = lambda message: None
''' + WRONG_QUANTIZE}}, "test_quantize"),
    "checks_replaced_through_an_attribute_chain": ({"cells": {"quantize": '''
h = torch.sys.modules["qlib.grading.harness"]
getattr(h, "__setattr__", None)
h.GradingFailure = type("Nothing", (Exception,), {})
object.__setattr__(h, "as_array", lambda value, *a, **k: __import__("numpy").zeros(0))
''' + WRONG_QUANTIZE}}, "test_quantize"),
    "input_transformer_rewrites_test_cells": ({"cells": {"quantize": '''
def _skip_tests(lines):
    return ["print('quantize: hidden checks passed')\\n"] if "grader." in "".join(lines) else lines
get_ipython().input_transformers_cleanup.append(_skip_tests)
''' + WRONG_QUANTIZE}}, "test_quantize"),
    "custom_exception_handler": ({"cells": {"quantize": '''
get_ipython().set_custom_exc((BaseException,), lambda *a, **k: print("quantize: hidden checks passed"))
''' + WRONG_QUANTIZE}}, "test_quantize"),
    "stack_inspection_for_expected_values": ({"cells": {"quantize": '''
import inspect

def quantize(x, scale, zero_point, qmin, qmax):
    for frame in inspect.stack():
        for name in ("expected", "q_ref", "e"):
            if name in frame.frame.f_locals:
                return frame.frame.f_locals[name]
    return x
'''}}, "test_quantize"),
    "patched_reference_functions": ({"cells": {"fake_quantize_weights": '''
import qlib, qlib.weights, qlib._reference
qlib._reference._blocked.clear()
qlib._reference.refuse_if_blocked = lambda name: None
qlib.weights.fake_quantize_weights = lambda model, *a, **k: copy.deepcopy(model)
qlib.fake_quantize_weights = qlib.weights.fake_quantize_weights

def fake_quantize_weights(model, bits, granularity):
    return copy.deepcopy(model)
'''}}, "test_fake_quantize_weights"),
    "always_equal_object": ({"cells": {"quantize": '''
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __array__(self, dtype=None, copy=None): return np.zeros(0)

def quantize(x, scale, zero_point, qmin, qmax):
    return Anything()
'''}}, "test_quantize"),
    "tensor_subclass_that_lies": ({"cells": {"quantize": '''
class Liar(torch.Tensor):
    def __eq__(self, other): return torch.ones_like(torch.Tensor(self), dtype=torch.bool)
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.equal, torch.allclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})

def quantize(x, scale, zero_point, qmin, qmax):
    return torch.zeros_like(x).as_subclass(Liar)
'''}}, "test_quantize"),
    "shadow_numpy_package_beside_the_notebook": ({
        "cells": {"dequantize": WRONG_DEQUANTIZE},
        "files": {"numpy/__init__.py": "raise SystemExit('shadow numpy imported')\n",
                  "qlib/__init__.py": "raise SystemExit('shadow qlib imported')\n",
                  "torch.py": "raise SystemExit('shadow torch imported')\n"}}, "test_dequantize"),
    "added_cells_with_points_and_checks": ({
        "cells": {"quantize": WRONG_QUANTIZE},
        "add": [("test_quantize", "grader.check_quantize = lambda *a, **k: None\n", None),
                ("test_quantize", "print('bonus')\n",
                 {"grade": True, "grade_id": "bonus", "locked": False, "points": 100, "schema_version": 3,
                  "solution": False, "task": False})]}, "test_quantize"),
    "test_cell_reflagged_and_emptied": ({
        "cells": {"quantize": WRONG_QUANTIZE},
        "edit": {"test_quantize": ("print('quantize: hidden checks passed')\n",
                                   {"grade": False, "solution": True, "locked": False})}}, "test_quantize"),
    "replaced_setup_cell": ({
        "cells": {"quantize": WRONG_QUANTIZE},
        "edit": {"setup": ("import torch, numpy as np, copy, math\n"
                           "class grader:\n    def __getattr__(self, n): return lambda *a, **k: None\n"
                           "grader = grader()\n", {})}}, "test_quantize"),
    "writes_to_the_course": ({"cells": {"quantize": SEARCH + '''
COURSE = "{course}"
for path in [COURSE + "/gradebook.db", COURSE + "/nbgrader_config.py", COURSE + "/solutions/{lab}/{lab}.ipynb",
             COURSE + "/submitted/victim/{lab}/{lab}.ipynb", COURSE + "/autograded/victim/{lab}/{lab}.ipynb",
             "{qlib}/grading/lab03.py", "{qlib}/grading/harness.py"] + search("/gradebook.db"):
    try:
        with open(path, "ab") as handle:
            handle.write(b"\\nimport os; os.system('echo owned')\\n")
        print("wrote", path)
    except OSError as err:
        print("could not write", path, type(err).__name__)
''' + WRONG_QUANTIZE}}, "test_quantize"),
    "reads_solutions_and_secret": ({"cells": {"dequantize": SEARCH + '''
SOURCES = ["{course}/solutions/{lab}/{lab}.ipynb", "{secret}"] + [p for p in search(".ipynb") if "/solutions/" in p]

def dequantize(q, scale, zero_point):
    for path in SOURCES:
        try:
            text = open(path).read()
        except OSError:
            continue
        return torch.tensor([float(len(text))])  # any use at all of what was read
    return q
'''}}, "test_dequantize"),
    "detached_process_rewrites_scores": ({"cells": {"quantize": '''
import subprocess
subprocess.Popen(["sh", "-c", "sleep 4; for f in $(find / -name gradebook.db 2>/dev/null); do echo x >> $f; done; "
                  "touch {course}/owned"], start_new_session=True)
''' + WRONG_QUANTIZE}}, "test_quantize"),
    "network_to_the_graders_loopback": ({"cells": {"quantize": '''
import socket

def quantize(x, scale, zero_point, qmin, qmax):
    for host in ("127.0.0.1", "localhost"):
        try:
            socket.create_connection((host, {port}), timeout=2).sendall(b"hello")
        except OSError:
            pass
    return x
'''}}, "test_quantize"),
    "os_exit_in_a_function": ({"cells": {"quantize": '''
import os

def quantize(x, scale, zero_point, qmin, qmax):
    os._exit(0)
'''}}, "test_quantize"),
    "os_exit_in_a_cell": ({"cells": {"quantize": "import os\nos._exit(3)\n"}}, "test_quantize"),
    "spins_forever": ({"cells": {"asymmetric_qparams": '''
def asymmetric_qparams(rmin, rmax, qmin, qmax):
    while True:
        pass
'''}}, "test_asymmetric_qparams"),
    "swallows_every_time_limit": ({"cells": {"quantize": '''
import time

def quantize(x, scale, zero_point, qmin, qmax):
    while True:
        try:
            time.sleep(1000)
        except BaseException:
            pass
'''}}, "test_quantize"),
    "memory_bomb": ({"cells": {"fake_quantize_weights": '''
def fake_quantize_weights(model, bits, granularity):
    hog = []
    while True:
        hog.append(bytearray(2**28))
'''}}, "test_fake_quantize_weights"),
    "process_bomb": ({"cells": {"fake_quantize_weights": '''
import os, time

def fake_quantize_weights(model, bits, granularity):
    while True:
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
'''}}, "test_fake_quantize_weights"),
}


def _build(released, answers, spec, fill):
    nb = course.fill(released, {**answers, **{k: fill(v) for k, v in spec.get("cells", {}).items()}})
    for grade_id, (source, meta) in spec.get("edit", {}).items():
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
        cell.source = fill(source)
        cell.metadata["nbgrader"].update(meta)
    for after, source, meta in spec.get("add", []):
        i = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == after)
        cell = nbformat.v4.new_code_cell(fill(source))
        if meta:
            cell.metadata["nbgrader"] = meta
        nb.cells.insert(i + 1, cell)
    return nb


def _course_files(root: Path) -> dict[str, str]:
    """SHA-256 of every file of the course that grading attackers must leave alone."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != "autograded" and rel.name != "gradebook.db" \
                and not (rel.parts[0] == "submitted" and rel.parts[1] != "victim") \
                and not (rel.parts[0] == "grading_records" and rel.stem != "victim"):
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted((root / "autograded" / "victim").rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted((course.ROOT / "qlib").rglob("*.py")):
        out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _victim_rows(root: Path) -> list:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        sub = gb.find_submission_notebook(LAB, LAB, "victim")
        return sorted((g.name, g.auto_score, g.manual_score, g.needs_manual_grade) for g in sub.grades) + \
            sorted((c.name, c.auto_comment, c.manual_comment) for c in sub.comments)


def _sandbox_processes(folder: Path) -> list[str]:
    """Sandboxed processes of this checkout's environment whose kernel's folder is in ``folder``.

    The attackers are graded with ``TMPDIR`` there, so every kernel of theirs, and every process
    forked from one, names it (``-f folder/qlib-kernel-.../kernel.json``); the labs graded beside
    them in the session are not theirs.
    """
    ps = subprocess.run(["ps", "-ww", "-eo", "uid=,pid=,args="], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if line.split() and int(line.split()[0]) in sandbox.UID_RANGE
            and sys.prefix in line and str(folder) in line]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = course.make_course(tmp_path_factory.mktemp("redteam") / "course", LAB)
    # lab 3's cells take about a second; an attack that hangs the experiment cell need not cost 120 s
    with open(root / "nbgrader_config.py", "a") as config:
        config.write("\nc.SealedExecute.timeout = 10\n")
    released = course.read_notebook(course.notebook_path(root, "labs", LAB))
    answers = course.solution_code(course.read_notebook(course.ROOT / "solutions" / LAB / f"{LAB}.ipynb"))
    course.autograde(root, LAB, {"victim": course.fill(released, answers)}, workers=1)
    before, victim_before = _course_files(root), _victim_rows(root)

    connections = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(server.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()

    def fill(text):
        return (text.replace("{course}", str(root)).replace("{lab}", LAB).replace("{port}", str(server.getsockname()[1]))
                .replace("{qlib}", str(course.ROOT / "qlib")).replace("{secret}", str(course.SECRET)))

    subs = {name: _build(released, answers, spec, fill) for name, (spec, _) in ATTACKS.items()}
    files = {name: spec["files"] for name, (spec, _) in ATTACKS.items() if "files" in spec}
    kernels = tmp_path_factory.mktemp("redteam-kernels")  # where the attackers' kernels live (see _sandbox_processes)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(kernels))
        scores, dirs = course.autograde(root, LAB, subs, workers=2, force=False, files=files)  # not the victim again
    stop.set()
    server.close()
    return {"root": root, "scores": scores, "dirs": dirs, "before": before, "after": _course_files(root),
            "victim_before": victim_before, "victim_after": _victim_rows(root), "connections": connections,
            "kernels": kernels}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_earns_nothing_and_costs_only_its_task(attacked, name):
    task = ATTACKS[name][1]
    assert attacked["scores"][name] == {**POINTS, **dict.fromkeys(WRITTEN, 0), task: 0}, attacked["scores"][name]


def test_course_files_and_other_students_are_untouched(attacked):
    name = "writes_to_the_course"
    tried = course.cell_output(attacked["dirs"][name], LAB, name, "quantize")
    assert tried.count("could not write") >= 7 and not re.search(r"^wrote ", tried, re.M), tried  # it tried, and failed
    assert attacked["after"] == attacked["before"]
    assert attacked["victim_after"] == attacked["victim_before"]
    assert not (attacked["root"] / "owned").exists()


def test_no_sandbox_process_outlives_grading(attacked):
    assert _sandbox_processes(attacked["kernels"]) == []


def test_the_process_check_sees_a_running_sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SandboxedKernel makes its folder
    with SandboxedKernel():
        assert len(_sandbox_processes(tmp_path)) == 1
    assert _sandbox_processes(tmp_path) == []


def test_nothing_reaches_the_graders_loopback(attacked):
    assert attacked["connections"] == []


def test_feedback_of_an_attacker_shows_no_hidden_test(attacked):
    root = attacked["dirs"]["reads_solutions_and_secret"]
    course.nbgrader("generate_feedback", LAB, "--student", "reads_solutions_and_secret", "--force", cwd=root)
    html = next((root / "feedback" / "reads_solutions_and_secret" / LAB).glob("*.html")).read_text()
    assert "HIDDEN_SEED" not in html and "BEGIN HIDDEN TESTS" not in html
    assert "A hidden check failed" in html or "expected" in html
