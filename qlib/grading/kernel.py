"""A Jupyter kernel in the sandbox, driven from outside with wall-clock limits.

:class:`SandboxedKernel` starts ``ipykernel`` under :func:`qlib.grading.sandbox.sandbox_command`
and talks to it over Unix sockets (jupyter_client's ``ipc`` transport) in a
private connection directory. :meth:`SandboxedKernel.execute` runs code and
returns an :class:`Execution`: the outputs (streams capped in size), and a
status of ``"ok"``, ``"error"``, ``"timeout"`` or ``"died"``. A kernel that
times out is killed with every process it started, never trusted to stop.

Messages larger than :data:`MAX_MESSAGE` are refused by the socket itself, so
a kernel cannot make the grader run out of memory.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from qlib.grading import sandbox

MAX_MESSAGE = 256 * 2**20
MAX_STREAM_CHARS = 20_000  #: characters of stdout/stderr kept per cell; the rest is replaced by a note
MAX_OUTPUTS = 50           #: rich outputs (figures, tables) kept per cell


class _CappedClient(BlockingKernelClient):
    """A kernel client whose sockets drop any message over :data:`MAX_MESSAGE` bytes."""

    def _create_connected_socket(self, channel, identity=None):
        sock = self.context.socket(zmq.DEALER if channel != "iopub" else zmq.SUB)
        if channel == "iopub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.linger = 1000
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        if identity:
            sock.identity = identity
        sock.connect(self._make_url(channel))
        return sock


@dataclass
class Execution:
    """What one ``execute`` did: ``status`` is "ok", "error", "timeout" or "died"."""

    status: str
    outputs: list = field(default_factory=list)
    execution_count: int | None = None


class _OutputCollector:
    """Turns iopub messages into notebook outputs, within the size caps."""

    def __init__(self):
        self.outputs = []
        self.stream_chars = 0
        self.truncated = False

    def add(self, msg) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "clear_output":
            self.outputs = [o for o in self.outputs if o.output_type == "error"]
            return
        if kind not in ("stream", "display_data", "execute_result", "error"):
            return
        if kind == "stream":
            text = str(content.get("text", ""))
            room = MAX_STREAM_CHARS - self.stream_chars
            if room <= 0:
                self._note_truncated()
                return
            self.stream_chars += len(text)
            content = {**content, "text": text[:room]}
        elif len([o for o in self.outputs if o.output_type != "stream"]) >= MAX_OUTPUTS:
            self._note_truncated()
            return
        try:
            out = nbformat.v4.output_from_msg(msg | {"content": content})
        except Exception:  # a malformed message from the kernel is dropped
            return
        if out.output_type == "stream" and self.outputs and self.outputs[-1].get("name") == out.name \
                and self.outputs[-1].output_type == "stream":
            self.outputs[-1].text += out.text
        else:
            self.outputs.append(out)

    def _note_truncated(self) -> None:
        if not self.truncated:
            self.truncated = True
            self.outputs.append(nbformat.v4.new_output(
                "stream", name="stderr", text="\n[output truncated: this cell printed too much]\n"))


class SandboxedKernel:
    """One ipykernel in its own sandbox (or, opted out, a plain local process).

    Use as a context manager; :meth:`restart` gives a fresh kernel after a
    timeout or a crash.
    """

    def __init__(self, notebook: Path | None = None, limits: sandbox.Limits = sandbox.Limits(),
                 startup_timeout: float = 60.0):
        self.notebook, self.limits, self.startup_timeout = notebook, limits, startup_timeout
        self.sandboxed = not sandbox.unsandboxed()
        if self.sandboxed:
            sandbox.require_bubblewrap()
        else:
            sandbox.warn_unsandboxed()
        self.process: subprocess.Popen | None = None
        self.client: _CappedClient | None = None
        self._lease = None
        self._dir: Path | None = None

    # --- life cycle --------------------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="qlib-kernel-"))
        conn_dir = self._dir / "conn"
        conn_dir.mkdir(mode=0o700)
        uid = None
        if self.sandboxed and os.geteuid() == 0:
            self._lease = sandbox.UserIdLease()
            uid = self._lease.uid
            os.chown(conn_dir, uid, uid)
        conn_file = conn_dir / "kernel.json"
        write_connection_file(str(conn_file), transport="ipc", ip=str(conn_dir / "k"),
                              key=secrets.token_hex(16).encode())
        if uid is not None:
            os.chown(conn_file, uid, uid)
        kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", str(conn_file),
                  "--HistoryManager.enabled=False", "--IPKernelApp.parent_handle=0"]
        if self.sandboxed:
            cmd, env = sandbox.sandbox_command(conn_dir, self.notebook, self.limits, uid) + kernel, None
        else:
            cmd, env = kernel, {k: v for k, v in os.environ.items() if k != "JPY_PARENT_PID"}
        self.process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True,
                                        cwd=str(self._dir) if not self.sandboxed else "/")
        self.client = _CappedClient(connection_file=str(conn_file))
        self.client.load_connection_file()
        self.client.start_channels()
        try:
            self._wait_ready()
        except Exception:
            self.shutdown()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"the grading kernel could not start (exit {self.process.returncode}):\n{err}")
            try:
                self.client.wait_for_ready(timeout=1.0)
                return
            except RuntimeError:
                continue
        raise RuntimeError(f"the grading kernel did not start within {self.startup_timeout:g} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def shutdown(self) -> None:
        """Kill the kernel and everything it started; remove its private folder."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        if self.process is not None:
            # A sandbox is killed only while it has not been reaped: a reaped process's pid (its group's
            # id) may by now be another's, another submission's sandbox even; and once the sandbox has
            # exited, its pid namespace has taken everything it started down with it. A kernel without
            # a sandbox has no such namespace: its group is killed whatever became of the kernel.
            if self.process.poll() is None or not self.sandboxed:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def restart(self) -> None:
        self.shutdown()
        self.start()

    # --- running code ------------------------------------------------------------------------------

    @property
    def connection_dir(self) -> Path:
        """The directory shared with the kernel (at the same path inside the sandbox)."""
        return self._dir / "conn"

    def execute(self, code: str, timeout: float, store_history: bool = True) -> Execution:
        """Run ``code``; wait at most ``timeout`` seconds (wall clock) for it to finish.

        On "timeout" the kernel is left running: call :meth:`restart`.
        """
        if not self.alive():
            return Execution("died")
        return self.collect(self.submit(code, store_history), timeout)

    def submit(self, code: str, store_history: bool = False) -> str:
        """Start running ``code`` without waiting; the message id for :meth:`collect`."""
        return self.client.execute(code, store_history=store_history, allow_stdin=False, stop_on_error=False)

    def collect(self, msg_id: str, timeout: float) -> Execution:
        """Wait at most ``timeout`` seconds for the code started as ``msg_id``; its outputs and status."""
        collected = _OutputCollector()
        deadline = time.monotonic() + timeout
        idle = False
        while not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Execution("timeout", collected.outputs)
            try:
                msg = self.client.get_iopub_msg(timeout=min(remaining, 0.25))
            except Empty:
                if not self.alive():
                    return Execution("died", collected.outputs)
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                idle = msg["content"].get("execution_state") == "idle"
            else:
                collected.add(msg)
        reply = self._reply(msg_id, deadline)
        if reply is None:
            return Execution("died" if not self.alive() else "timeout", collected.outputs)
        status = "ok" if reply["content"].get("status") == "ok" else "error"
        count = reply["content"].get("execution_count")
        return Execution(status, collected.outputs, count if isinstance(count, int) else None)

    def _reply(self, msg_id: str, deadline: float):
        while True:
            remaining = max(deadline - time.monotonic(), 1.0)
            try:
                msg = self.client.get_shell_msg(timeout=min(remaining, 5.0))
            except Empty:
                return None
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg
