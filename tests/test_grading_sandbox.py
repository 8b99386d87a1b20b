"""The pieces of sealed grading on their own: the wire format, hidden seeds, the rebuilt notebook,
the sandbox and the student's check command. (The whole pipeline is attacked in test_sealed_grading.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pytest
import torch

from qlib.grading import sandbox, secret, sealed, wire
from qlib.grading.kernel import MAX_STREAM_CHARS, SandboxedKernel
from qlib.grading.remote import NotebookSession, StudentObject, SubmissionDied, SubmissionTimedOut
from qlib.models import load_pretrained
from tests import nbgrader_course as course

# --- the wire format: data in, data out, nothing else ------------------------------------------------


def test_data_round_trips_exactly():
    value = {"q": torch.tensor([[-128, 127]], dtype=torch.int8), "s": np.float32(0.1), "n": 2**70,
             "t": (1.5, float("inf"), None, True, "x", b"\x00\xff"), 3: [np.arange(3, dtype=np.uint16)],
             "dtype": torch.float16, "bf16": torch.tensor([1.0078125], dtype=torch.bfloat16)}
    got = wire.decode(wire.encode(value))
    assert torch.equal(got["q"], value["q"]) and got["q"].dtype == torch.int8
    assert got["s"] == np.float32(0.1) and got["s"].dtype == np.float32
    assert got["n"] == 2**70 and got["t"] == value["t"] and got["dtype"] is torch.float16
    assert got[3][0].dtype == np.uint16 and got[3][0].tolist() == [0, 1, 2]
    assert got["bf16"].dtype == torch.float32 and got["bf16"].item() == 1.0078125  # exact in float32


def test_a_model_travels_as_its_state():
    model = load_pretrained("cnn")
    got = wire.decode(wire.encode(model))
    assert isinstance(got, wire.ModuleState) and got.class_name == "DigitsCNN"
    assert all(torch.equal(got.state[k], v) for k, v in model.state_dict().items())


def test_objects_that_are_not_data_become_unsupported():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    got = wire.decode(wire.encode([AlwaysEqual(), print, np.array([object()])]))
    assert [type(g) for g in got] == [wire.Unsupported] * 3
    assert got[0].type_name == "AlwaysEqual"


@pytest.mark.parametrize("payload", [
    b"not json", b'{"__pickle__": "gASV"}', b'{"__ndarray__": "object", "shape": [1], "data": "AA=="}',
    b'{"__ndarray__": "int64", "shape": [4], "data": "AAAA"}', b'{"__tensor__": "float32", "shape": [-1], "data": ""}',
    b"[" * 100 + b"]" * 100, b'{"__dict__": [[[1], 2]]}', b'{"__dtype__": "Tensor"}', b"{}",
])
def test_malformed_results_are_refused(payload):
    with pytest.raises(wire.MalformedResult):
        wire.decode(payload)


# --- hidden seeds ----------------------------------------------------------------------------------


def test_hidden_seeds_depend_on_everything_and_only_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv(secret.SECRET_ENV, str(tmp_path / "keys" / "secret"))
    key = secret.course_secret()
    assert (tmp_path / "keys" / "secret").stat().st_mode & 0o777 == 0o600
    assert secret.course_secret() == key  # created once
    digest = secret.code_digest(["def f(): return 1"])
    seed = secret.hidden_seed(key, "lab03", "test_quantize", "ada", digest)
    assert seed == secret.hidden_seed(key, "lab03", "test_quantize", "ada", digest)
    others = {secret.hidden_seed(key, "lab03", "test_quantize", "bob", digest),
              secret.hidden_seed(key, "lab03", "test_dequantize", "ada", digest),
              secret.hidden_seed(key, "lab03", "test_quantize", "ada", secret.code_digest(["def f(): return 2"])),
              secret.hidden_seed(b"another course secret", "lab03", "test_quantize", "ada", digest)}
    assert seed not in others and len(others) == 4 and 0 <= seed < 2**31


# --- the graded notebook is the source's, with the student's answers ------------------------------


def _cell(kind, source, **meta):
    cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(source)
    if meta:
        cell.metadata["nbgrader"] = {"schema_version": 3, "locked": False, "solution": False, "grade": False,
                                     "task": False, **meta}
    return cell


def test_rebuild_takes_answers_from_the_submission_and_everything_else_from_the_source():
    source = nbformat.v4.new_notebook(cells=[
        _cell("code", "import torch", grade_id="setup", locked=True),
        _cell("code", "def f(): pass  # reference", grade_id="f", solution=True),
        _cell("code", "grader.check_f(f)", grade_id="test_f", grade=True, locked=True, points=2),
        _cell("code", "def g(): pass  # reference", grade_id="g", solution=True),
    ])
    submitted = nbformat.v4.new_notebook(cells=[
        _cell("code", "grader = None", grade_id="setup"),                      # edited set-up
        _cell("code", "def f(): return 1", grade_id="f", solution=False),    # re-flagged answer
        _cell("code", "helper = 2"),                                            # added cell
        _cell("code", "print('ok')", grade_id="test_f", solution=True, grade=False),  # emptied test
        _cell("code", "print('bonus')", grade_id="bonus", grade=True, points=100),    # invented test
    ])
    nb = sealed.rebuild(source, submitted)
    assert [c.source for c in nb.cells] == ["import torch", "def f(): return 1", "helper = 2",
                                            "grader.check_f(f)", "print('bonus')",
                                            "# YOUR CODE HERE\nraise NotImplementedError()"]
    assert [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells] == \
        ["setup", "f", None, "test_f", None, "g"]
    assert nb.cells[3].metadata["nbgrader"]["points"] == 2 and sealed.is_test_cell(nb.cells[3])
    assert [sealed.is_student_code(c) for c in nb.cells] == [False, True, True, False, True, True]


# --- the sandbox ------------------------------------------------------------------------------------


def test_grading_without_bubblewrap_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(sandbox, "bubblewrap_path", lambda: None)
    monkeypatch.delenv(sandbox.UNSANDBOXED_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        SandboxedKernel()


def test_autograde_without_bubblewrap_stops_and_says_how_to_install_it(tmp_path):
    lab = "lab03_linear_quantization"
    root = course.make_course(tmp_path / "course", lab)
    course.submit(root, lab, "ada", course.read_notebook(course.notebook_path(root, "labs", lab)))
    env = {**course.env(), "PATH": str(course.BIN)}  # no /usr/bin: no bwrap
    env.pop(sandbox.UNSANDBOXED_ENV, None)
    proc = subprocess.run([str(course.BIN / "nbgrader"), "autograde", lab], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "apt-get install bubblewrap" in proc.stdout + proc.stderr
    assert not course.notebook_path(root, "autograded", lab, "ada").exists()


def test_the_opt_out_warns(monkeypatch):
    monkeypatch.setenv(sandbox.UNSANDBOXED_ENV, "1")
    with pytest.warns(UserWarning, match="WITHOUT a sandbox"):
        SandboxedKernel()


PROBE = r'''
import json, os, socket, resource
seen = {"root": sorted(os.listdir("/")), "course": os.path.exists("{course}"), "home": os.environ["HOME"],
        "secret": os.path.exists("{secret}"), "pid": os.getpid(), "uid": os.getuid(),
        "files_here": sorted(os.listdir("."))}
try:
    socket.create_connection(("127.0.0.1", 22), timeout=2)
    seen["net"] = "connected"
except OSError as err:
    seen["net"] = type(err).__name__
try:
    open("{repo}/qlib/grading/harness.py", "a")
    seen["qlib_writable"] = True
except OSError:
    seen["qlib_writable"] = False
open(os.path.expanduser("~/scratch.txt"), "w").write("fine")
try:
    open("big.bin", "wb").write(b"0" * (65 * 2**20))
    seen["big_file"] = "written"
except OSError as err:
    seen["big_file"] = type(err).__name__
print(json.dumps(seen))
'''


def test_the_kernel_sees_only_its_notebook_and_has_no_network(tmp_path):
    notebook = tmp_path / "submission.ipynb"
    notebook.write_text("{}")
    code = PROBE.replace("{course}", str(course.ROOT / "solutions")).replace("{repo}", str(course.ROOT)) \
        .replace("{secret}", str(secret.secret_path()))
    with SandboxedKernel(notebook) as kernel:
        result = kernel.execute(code, 60)
        pid = kernel.process.pid
    assert result.status == "ok", result.outputs
    seen = json.loads(result.outputs[0]["text"])
    assert seen["course"] is False and seen["secret"] is False and seen["qlib_writable"] is False
    assert seen["files_here"] == ["submission.ipynb"] and seen["home"] == sandbox.HOME
    assert seen["net"] in ("ConnectionRefusedError", "OSError") and seen["pid"] < 10
    assert seen["big_file"] in ("OSError", "PermissionError") or "File size" in seen["big_file"]
    if os.geteuid() == 0:
        assert seen["uid"] in sandbox.UID_RANGE
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_output_is_capped_and_hangs_and_crashes_cost_one_call():
    with NotebookSession() as session:
        flood = session.run_cell("for i in range(10**5):\n    print('x' * 100)", 60)  # 500 times the cap
        assert sum(len(o.get("text", "")) for o in flood.outputs) < MAX_STREAM_CHARS + 200
        assert "output truncated" in flood.outputs[-1]["text"]
        session.run_cell("import os, time\nstate = 41\ndef inc():\n    return state + 1\n"
                         "def hang():\n    while True:\n        try:\n            time.sleep(100)\n"
                         "        except BaseException:\n            pass\ndef die():\n    os._exit(0)", 30)
        with pytest.raises(SubmissionTimedOut):
            session.call(StudentObject(session, "hang"), seconds=1)
        assert StudentObject(session, "inc")() == 42  # replayed in a fresh kernel
        with pytest.raises(SubmissionDied):
            StudentObject(session, "die")()
        assert StudentObject(session, "inc")() == 42


def test_a_kernel_that_has_exited_is_not_signalled_by_its_old_pid(monkeypatch):
    # once reaped, the sandbox's pid may be another process's group id: shutting down must not kill that
    with SandboxedKernel() as kernel:
        kernel.execute("import os\nos._exit(0)", 30)
        kernel.process.wait(timeout=30)
        signalled, killpg = [], os.killpg
        monkeypatch.setattr(os, "killpg", lambda pid, sig: (signalled.append(pid), killpg(pid, sig)))
        kernel.shutdown()
    assert signalled == []
    with SandboxedKernel() as kernel:  # a kernel that is still running is killed with its whole group
        pid = kernel.process.pid
        kernel.shutdown()
    assert signalled == [pid]


# --- the student's own check -------------------------------------------------------------------------


def test_student_check_reports_each_task_with_its_whole_hint(tmp_path):
    lab = "lab03_linear_quantization"
    released = course.read_notebook(course.ROOT / "labs" / lab / f"{lab}.ipynb")
    answers = course.solution_code(course.read_notebook(course.ROOT / "solutions" / lab / f"{lab}.ipynb"))
    answers["quantize"] = ("def quantize(x, scale, zero_point, qmin, qmax):\n"
                           "    return torch.clamp(torch.floor(x / scale) + zero_point, qmin, qmax)\n")
    path = tmp_path / f"{lab}.ipynb"
    nbformat.write(course.fill(released, answers), path)
    proc = subprocess.run([sys.executable, "-m", "qlib.grading.check", str(path)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env=course.env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[FAIL] test_quantize (4 points)" in proc.stdout and "floor instead of round" in proc.stdout
    assert "[pass] test_dequantize" in proc.stdout and "practice checks passed" in proc.stdout
    from tests.test_lab03_grading import POINTS

    autograded = sum(POINTS.values())  # the check counts what is graded automatically; quantize's 4 are lost
    assert f"{autograded - 4} of {autograded} points" in proc.stdout


def test_the_sandbox_sees_the_notebook_without_its_hidden_tests_and_the_verdict_uses_them():
    test = ("grader.check_integer_range(integer_range)\n### BEGIN HIDDEN TESTS\n"
            "grader.check_integer_range(integer_range, seed=HIDDEN_SEED)\n### END HIDDEN TESTS\n")
    answer = ("import glob\nprint('HID' + 'DEN' in open(glob.glob('*.ipynb')[0]).read())\n"
              "def integer_range(bits, signed=True, narrow=False):\n"
              "    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)\n"
              "    return lo + narrow, hi if bits < 9 else hi + 1  # wrong beyond the visible cases\n")
    nb = nbformat.v4.new_notebook(cells=[
        _cell("code", answer, grade_id="integer_range", solution=True),
        _cell("code", test, grade_id="test_integer_range", grade=True, locked=True, points=2),
    ])
    seeds = []
    sealed.run_notebook(nb, sealed.lab_module("lab03_linear_quantization"), lambda gid: seeds.append(gid) or 5)
    assert nb.cells[0].outputs[0]["text"] == "False\n"
    assert seeds == ["test_integer_range"]
    errors = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert "visible cases passed" in nb.cells[1].outputs[0]["text"]
    assert errors and errors[0]["evalue"].startswith("A hidden check failed") and "seed" not in errors[0]["evalue"]


def test_a_test_cell_shares_one_time_budget_across_its_calls():
    import time

    slow = ("import time\ndef integer_range(bits, signed=True, narrow=False):\n    time.sleep(0.5)\n"
            "    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)\n"
            "    return lo + narrow, hi\n")
    with NotebookSession() as session:
        session.run_cell(slow, 30)
        start = time.monotonic()
        outputs = sealed.run_test_cell("grader.check_integer_range(integer_range, seed=HIDDEN_SEED)\n",
                                       sealed.lab_module("lab03_linear_quantization"), session, 3, timeout=3)
        elapsed = time.monotonic() - start
    assert elapsed < 10  # 128 hidden cases at 0.5 s each would take a minute
    assert outputs[-1].output_type == "error" and "ran out of time" in outputs[-1]["evalue"]


def test_a_kernel_without_the_graders_side_stops_grading_instead_of_scoring_zero(monkeypatch):
    """qlib missing from the grading environment is the course's problem: no timeouts charged to the student."""
    import time

    from qlib.grading import classroom, remote

    monkeypatch.setattr(remote, "BOOTSTRAP", "import qlib.grading.no_such_module")
    start = time.monotonic()
    with pytest.raises(remote.GradingUnavailable, match="could not load qlib's grading side"):
        with NotebookSession():
            pass
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    done = classroom.execute(classroom.Job("lab03_linear_quantization", "eve", "lab03_linear_quantization",
                                           nbformat.writes(nb), {}))
    assert done.outcome == "crashed" and "GradingUnavailable" in done.error and "ModuleNotFoundError" in done.error
    assert time.monotonic() - start < 20


def test_the_kernel_imports_the_graders_own_qlib():
    """Whatever the venv's install points at (another clone, say), the kernel runs the grader's qlib."""
    import qlib

    with SandboxedKernel() as kernel:
        result = kernel.execute("import qlib; print(qlib.__file__)", 60)
    printed = "".join(o.get("text", "") for o in result.outputs).strip()
    assert result.status == "ok" and printed == os.path.realpath(qlib.__file__), result.outputs
    assert sandbox.environment("/c")["PYTHONPATH"] == os.path.dirname(os.path.dirname(os.path.realpath(qlib.__file__)))
