"""The bubblewrap sandbox that every graded kernel runs in.

:func:`sandbox_command` returns the command prefix that starts a program with

* a read-only view of the system libraries, the Python installation, the
  virtual environment and the ``qlib`` package, and nothing else of the host:
  no course directory, no ``solutions/``, no gradebook, no other submission,
  no home directory, no grading secret;
* a private, size-limited, writable home (``/home/student``) holding only the
  submitted notebook, and a private ``/tmp``;
* its own network namespace (no network at all), PID namespace (every process
  it starts dies with it), IPC and UTS namespaces, and a cleared environment;
* resource limits (:class:`Limits`): address space, processes, file size,
  open files, CPU time; as root it also runs under an unprivileged user id of
  its own, so the process limit cannot be shared with anything else.

Only the connection directory (the kernel's Unix sockets) is shared with the
grader. Output size and wall-clock time are limited by the grader
(:mod:`qlib.grading.kernel`), from outside the sandbox.

Without the ``bwrap`` executable :func:`require_bubblewrap` raises
:class:`SandboxUnavailable`, which says how to install it. Setting the
environment variable ``QLIB_GRADING_UNSANDBOXED=1`` runs kernels without the
sandbox, for trusted local use only (a student checking their own notebook on
a machine without bubblewrap); a warning is printed every time.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

UNSANDBOXED_ENV = "QLIB_GRADING_UNSANDBOXED"
HOME = "/home/student"
#: User ids the sandboxed kernels run under when grading as root (one per concurrent sandbox).
UID_RANGE = range(61000, 61256)
#: Host paths made visible (read-only) when they exist; /etc is reduced to what Python needs.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                "/etc/alternatives", "/etc/fonts", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
                "/etc/localtime", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/mime.types")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or does not work here."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed kernel."""

    address_space: int = 4 * 2**30   #: bytes of virtual memory (a lab kernel peaks at about 1.6 GiB)
    processes: int = 256             #: processes and threads of the sandbox's user
    file_size: int = 64 * 2**20      #: bytes in any one file it writes
    open_files: int = 256
    cpu_seconds: int = 1800          #: a backstop; wall-clock limits are enforced by the grader
    home_size: int = 256 * 2**20     #: bytes of its writable home
    tmp_size: int = 64 * 2**20       #: bytes of its /tmp


def unsandboxed() -> bool:
    """True when the trusted-use opt-out is set (kernels run without the sandbox)."""
    return os.environ.get(UNSANDBOXED_ENV, "") not in ("", "0")


def bubblewrap_path() -> str | None:
    return shutil.which("bwrap")


def require_bubblewrap() -> str:
    """Path of ``bwrap``; :class:`SandboxUnavailable` with install instructions if there is none."""
    path = bubblewrap_path()
    if path is None:
        raise SandboxUnavailable(
            "Grading runs every submission in a bubblewrap sandbox, and `bwrap` is not installed.\n"
            "Install it (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: `sudo dnf install bubblewrap`) "
            "and grade again.\nFor trusted local use only (your own notebook), "
            f"`export {UNSANDBOXED_ENV}=1` runs the kernel without a sandbox.")
    return path


def warn_unsandboxed() -> None:
    warnings.warn(f"{UNSANDBOXED_ENV} is set: the notebook runs WITHOUT a sandbox and can read and change "
                  "every file this user can. Use this for your own notebooks only, never to grade students.",
                  stacklevel=3)


class UserIdLease:
    """An unprivileged user id no other sandbox of this machine holds (a lock file per id)."""

    def __init__(self, lock_dir: Path = Path("/tmp/qlib-grading-uids")):
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        for uid in UID_RANGE:
            handle = open(lock_dir / str(uid), "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.uid, self._handle = uid, handle
            return
        raise SandboxUnavailable(f"all {len(UID_RANGE)} sandbox user ids are in use")

    def release(self) -> None:
        """Kill every process left under this user id, then let the id go to the next sandbox.

        The sandbox's processes die with its PID namespace, but not all at the same instant; a
        process bomb's thousand stragglers would otherwise count against the next sandbox's
        process limit.
        """
        if self._handle is not None:
            kill_user_processes(self.uid)
            self._handle.close()
            self._handle = None


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                line = next(l for l in status if l.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(line.split()[1]) == uid:
            pids.append(int(entry))
    return pids


def kill_user_processes(uid: int, seconds: float = 30.0) -> None:
    """SIGKILL every process of ``uid`` until none is left (or ``seconds`` have passed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = _processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def _python_paths() -> list[str]:
    """The Python installation, the virtual environment and the folder of the ``qlib`` package."""
    import qlib

    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix,
             os.path.dirname(os.path.realpath(qlib.__file__))}
    return sorted(paths, key=len)


def environment(conn_dir: str) -> dict[str, str]:
    """The whole environment of a sandboxed kernel (nothing is inherited from the grader).

    ``PYTHONPATH`` names the folder of the grader's own ``qlib``, so the kernel imports that very
    copy (the only thing of that folder bound into the sandbox), whatever the venv's install points at.
    """
    import qlib

    return {
        "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.realpath(qlib.__file__))),
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": HOME, "USER": "student", "LANG": "C.UTF-8",
        "IPYTHONDIR": f"{HOME}/.ipython", "MPLCONFIGDIR": f"{HOME}/.matplotlib", "MPLBACKEND": "agg",
        "JUPYTER_RUNTIME_DIR": conn_dir, "JUPYTER_PLATFORM_DIRS": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1", "PYTHONHASHSEED": "0", "JOBLIB_MULTIPROCESSING": "0",
    }


def _traversable_parents(path: str) -> list[str]:
    """bwrap arguments that create the parents of ``path`` world-traversable (the host's may be 0700)."""
    args = []
    for parent in reversed(Path(path).parents[:-1]):
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def sandbox_command(conn_dir: Path, notebook: Path | None, limits: Limits, uid: int | None) -> list[str]:
    """The prefix that runs a command inside the sandbox (see the module docstring).

    ``conn_dir`` is shared writable at the same path; ``notebook`` (if given) is
    copied read-only to the home folder; ``uid`` is the unprivileged user id to
    run as (when the grader is root), or None to stay the calling user.
    """
    bwrap = require_bubblewrap()
    limit = ["prlimit", f"--as={limits.address_space}", f"--fsize={limits.file_size}",
             f"--nofile={limits.open_files}", f"--cpu={limits.cpu_seconds}", "--core=0"]
    if uid is not None:
        limit.append(f"--nproc={limits.processes}")
    cmd = limit + ["--", bwrap, "--die-with-parent", "--new-session", "--clearenv", "--dev", "/dev", "--proc", "/proc"]
    if uid is None:  # unprivileged bwrap: a user namespace of its own, and no further ones inside
        cmd += ["--unshare-all", "--unshare-user", "--disable-userns"]
    else:  # bwrap as root; the kernel then drops to ``uid`` (setpriv below) with no capabilities left
        cmd += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    cmd += ["--perms", "0755", "--dir", "/etc"]
    for path in SYSTEM_PATHS:
        cmd += ["--ro-bind-try", path, path]
    # writable by the kernel's user whichever user bwrap runs as (the sandbox holds no one else)
    cmd += ["--perms", "1777", "--size", str(limits.tmp_size), "--tmpfs", "/tmp",
            "--perms", "1777", "--size", str(limits.home_size), "--tmpfs", HOME,
            "--perms", "1777", "--dir", f"{HOME}/work"]
    for path in _python_paths():
        cmd += _traversable_parents(path) + ["--ro-bind", path, path]
    cmd += _traversable_parents(str(conn_dir)) + ["--bind", str(conn_dir), str(conn_dir)]
    if notebook is not None:
        cmd += ["--ro-bind", str(notebook), f"{HOME}/work/{notebook.name}"]
    for key, value in environment(str(conn_dir)).items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", f"{HOME}/work", "--"]
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--"]
    return cmd
