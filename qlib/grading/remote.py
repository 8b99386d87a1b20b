"""The grader's side of a sandboxed notebook: run its cells, call its functions.

A :class:`NotebookSession` owns one :class:`~qlib.grading.kernel.SandboxedKernel`.
It runs the notebook's cells in order (:meth:`NotebookSession.run_cell`) and
remembers them, so that after a timeout or a crash it can start a fresh kernel
and replay them (a cell that timed out or killed its kernel is not replayed).

:class:`StudentObject` stands for a name defined by the notebook. Calling it,
or passing it to :meth:`NotebookSession.call`, runs the call inside the kernel
and returns the result as data (:mod:`qlib.grading.wire`); models come back as
copies of the model that was passed in, with the returned weights. What can go
wrong is raised as a :class:`SubmissionError` subclass, for the check to turn
into a message.
"""
from __future__ import annotations

import copy
import os
from contextlib import contextmanager
import pickle
import socket
import time

import numpy
import torch

from qlib.grading import wire
from qlib.grading.kernel import Execution, SandboxedKernel
from qlib.grading.kernel_side import StudentRef, map_leaves

BOOTSTRAP = "import qlib.grading.kernel_side as __grading_kernel_side__"
MAX_REPLY = wire.MAX_BYTES


class GradingUnavailable(RuntimeError):
    """The sandboxed kernel could not load the grader's side (an installation problem, not the student's)."""


class SubmissionError(Exception):
    """A call into the notebook did not return a usable result."""


class SubmissionRaised(SubmissionError):
    def __init__(self, types: list[str], message: str):
        super().__init__(message)
        self.types, self.message = types, message
        self.type_name = types[0] if types else "Exception"


class SubmissionMissing(SubmissionError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class SubmissionTimedOut(SubmissionError):
    """A call ran out of its own time, or (``budget``) of the time its whole test cell shares."""

    def __init__(self, seconds: float, budget: bool = False):
        super().__init__(f"{seconds:g} s")
        self.seconds, self.budget = seconds, budget


class SubmissionDied(SubmissionError):
    """The kernel exited (os._exit, a crash, out of memory) during the call."""


class SubmissionUnreadable(SubmissionError):
    """The result is not data the grader accepts."""


class StudentObject:
    """A name in the notebook's namespace (with an attribute path); calls run in the kernel."""

    def __init__(self, session: "NotebookSession", name: str, path: tuple = ()):
        self._session, self._ref = session, StudentRef(name, tuple(path))

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return StudentObject(self._session, self._ref.name, self._ref.path + (attr,))

    def __call__(self, *args, **kwargs):
        return self._session.call(self, args, kwargs)

    def __repr__(self):
        return ".".join((self._ref.name,) + self._ref.path)


def session_of(*values) -> "NotebookSession | None":
    """The session of the first :class:`StudentObject` among ``values`` (searched one level into containers)."""
    for value in values:
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, StudentObject):
                return item._session
    return None


def _to_refs(value):
    return map_leaves(lambda v: v._ref if isinstance(v, StudentObject) else v, value)


def _modules_in(value, found: list) -> list:
    if isinstance(value, torch.nn.Module):
        found.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _modules_in(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _modules_in(v, found)
    return found


def _rebuild_module(state: wire.ModuleState, templates: list):
    """A copy of the template model of the same class and parameter shapes, holding the returned weights."""
    shapes = {k: tuple(v.shape) for k, v in state.state.items()}
    for template in templates:
        own = template.state_dict()
        if type(template).__name__ == state.class_name and {k: tuple(v.shape) for k, v in own.items()} == shapes:
            model = copy.deepcopy(template)
            with torch.no_grad():
                for key, tensor in state.state.items():
                    own_tensor = model.state_dict()[key]
                    own_tensor.copy_(tensor.to(own_tensor.dtype))
            model.train(state.training)
            return model
    return wire.Unsupported(f"{state.class_name} (a model that is not a copy of the one passed in)")


def _rebuild(value, templates: list):
    return map_leaves(lambda v: _rebuild_module(v, templates) if isinstance(v, wire.ModuleState) else v, value)


def _mirror(sent, after) -> None:
    """Apply to the grader's arguments the changes the call made to its copies of them."""
    if isinstance(sent, torch.Tensor) and isinstance(after, torch.Tensor):
        if after.shape == sent.shape:
            with torch.no_grad():
                sent.copy_(after.to(sent.dtype))
    elif isinstance(sent, numpy.ndarray) and isinstance(after, numpy.ndarray):
        if after.shape == sent.shape and sent.flags.writeable:
            sent[...] = after.astype(sent.dtype)
    elif isinstance(sent, torch.nn.Module) and isinstance(after, wire.ModuleState):
        own = sent.state_dict()
        with torch.no_grad():
            for key, tensor in after.state.items():
                if key in own and own[key].shape == tensor.shape:
                    own[key].copy_(tensor.to(own[key].dtype))
    elif isinstance(sent, (list, tuple)) and isinstance(after, list) and len(after) == len(sent):
        for s, a in zip(sent, after):
            _mirror(s, a)
    elif isinstance(sent, dict) and isinstance(after, dict):
        for key, a in after.items():
            if key in sent:
                _mirror(sent[key], a)


class _CallChannel:
    """A Unix socket on which the kernel answers calls, while it runs ``serve_calls`` as one long cell.

    One execute request per test cell instead of one per call: a call then
    costs a socket round trip, not a trip through the kernel's message loop.
    """

    def __init__(self, kernel: SandboxedKernel, timeout: float = 30.0):
        self.kernel = kernel
        path = str(kernel.connection_dir / "calls.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o666)  # the kernel runs as another (unprivileged) user
            listener.listen(1)
            listener.settimeout(timeout)
            self.msg_id = kernel.submit(f"__grading_kernel_side__.serve_calls({path!r})")
            self.sock, _ = listener.accept()  # the first connection only; the listener closes below
        finally:
            listener.close()
            if os.path.exists(path):
                os.unlink(path)

    def _read(self, n: int, deadline: float) -> bytes:
        chunks = []
        while n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(min(remaining, 0.5))
            try:
                chunk = self.sock.recv(min(n, 1 << 20))
            except socket.timeout:
                if not self.kernel.alive():
                    raise EOFError from None
                continue
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def request(self, payload: bytes, seconds: float) -> bytes:
        """Send one request; the reply's bytes. TimeoutError, EOFError or SubmissionUnreadable otherwise."""
        deadline = time.monotonic() + seconds
        self.sock.settimeout(seconds)
        try:
            self.sock.sendall(len(payload).to_bytes(8, "big") + payload)
        except OSError:
            raise EOFError from None
        size = int.from_bytes(self._read(8, deadline), "big")
        if size > MAX_REPLY:
            raise SubmissionUnreadable(f"a reply of {size} bytes")
        return self._read(size, deadline)

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall((0).to_bytes(8, "big"))
        except OSError:
            pass
        self.sock.close()
        self.kernel.collect(self.msg_id, timeout)


class NotebookSession:
    """A notebook's cells running in a sandboxed kernel, replayed after a crash."""

    def __init__(self, notebook_path=None):
        self._notebook_path = notebook_path
        self.kernel: SandboxedKernel | None = None
        self._history: list[tuple[str, float]] = []  # cells to replay: (source, timeout)
        self._channel: _CallChannel | None = None
        self._deadline: float | None = None

    def __enter__(self):
        self._start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._channel = None
        if self.kernel is not None:
            self.kernel.shutdown()
            self.kernel = None

    def _start(self) -> None:
        self.kernel = SandboxedKernel(self._notebook_path)
        self.kernel.start()
        result = self.kernel.execute(BOOTSTRAP, 60, store_history=False)  # before any student code
        if result.status != "ok":
            error = next((f"{o.get('ename')}: {o.get('evalue')}" for o in result.outputs
                          if o.get("output_type") == "error"), result.status)
            self.close()
            raise GradingUnavailable(f"the sandboxed kernel could not load qlib's grading side ({error}); "
                                     "is qlib installed in the environment that grades (pip install -r "
                                     "requirements.txt)?")

    def _close_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            channel.close()

    def recover(self) -> None:
        """A fresh kernel with the cells run so far run again (those that fail now are dropped)."""
        self.close()
        self._start()
        kept = []
        for source, timeout in self._history:
            result = self.kernel.execute(source, timeout, store_history=False)
            if result.status in ("timeout", "died"):
                self.close()
                self._start()
                for earlier, t in kept:
                    self.kernel.execute(earlier, t, store_history=False)
                continue
            kept.append((source, timeout))
        self._history = kept

    def run_cell(self, source: str, timeout: float) -> Execution:
        """Run one cell of the notebook; after a timeout or a crash the session recovers."""
        self._close_channel()
        result = self.kernel.execute(source, timeout)
        if result.status in ("timeout", "died"):
            self.recover()
        else:
            self._history.append((source, timeout))
        return result

    @contextmanager
    def time_budget(self, seconds: float):
        """Inside the ``with``, all calls together get ``seconds`` (one test cell's limit)."""
        self._deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def call(self, fn, args=(), kwargs=None, blocked=(), stand_ins=None, seconds: float = 20.0):
        """``fn(*args, **kwargs)`` inside the kernel; the result as data, or a :class:`SubmissionError`."""
        kwargs = kwargs or {}
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise SubmissionTimedOut(seconds, budget=True)
            budget_bound, seconds = left < seconds, min(seconds, left)
        else:
            budget_bound = False
        request = {"fn": _to_refs(fn), "args": _to_refs(tuple(args)), "kwargs": _to_refs(dict(kwargs)),
                   "blocked": tuple(blocked), "stand_ins": dict(stand_ins or {})}
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if self._channel is None:
                self._channel = _CallChannel(self.kernel)
            reply = self._channel.request(payload, seconds)
        except (TimeoutError, socket.timeout):
            self.recover()
            raise SubmissionTimedOut(seconds, budget=budget_bound) from None
        except (EOFError, OSError):
            self.recover()
            raise SubmissionDied() from None
        try:
            outcome = wire.decode(reply)
        except wire.MalformedResult as err:
            raise SubmissionUnreadable(str(err)) from None
        if not isinstance(outcome, dict):
            raise SubmissionUnreadable("not a result")
        status = outcome.get("status")
        if status == "missing":
            raise SubmissionMissing(str(outcome.get("name")))
        if status == "raised":
            types = [str(t) for t in outcome.get("types", [])] if isinstance(outcome.get("types"), list) else []
            raise SubmissionRaised(types, str(outcome.get("message", "")))
        if status != "returned":
            raise SubmissionUnreadable(str(outcome.get("message", "no result")))
        templates = _modules_in([args, kwargs], [])
        _mirror([list(args), kwargs], outcome.get("after"))
        return _rebuild(outcome.get("value"), templates)
