"""Hidden test inputs that cannot be known before grading.

Each hidden check draws its inputs from a seed, and the seed is

    HMAC-SHA256(course secret, lab | test cell | student | digest of the submitted code)

truncated to 31 bits. The course secret is 32 random bytes kept outside the
repository, in the file named by ``QLIB_GRADING_SECRET_FILE`` or else
``~/.config/qlib-grading/secret`` (created, readable by its owner only, the first
time it is needed). Back it up: without it a regrade draws other inputs.

So the public repository, the gradebook and the feedback reveal nothing that
lets answers be prepared, the same submission always gets the same inputs
(and the same score), and a submission that hard-codes inputs it has seen
changes its own digest, and with it every input.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_ENV = "QLIB_GRADING_SECRET_FILE"


def secret_path() -> Path:
    return Path(os.environ.get(SECRET_ENV) or Path.home() / ".config" / "qlib-grading" / "secret")


def course_secret() -> bytes:
    """The course secret; created on first use."""
    path = secret_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 16:
        raise RuntimeError(f"the grading secret {path} is shorter than 16 bytes; delete it to make a new one")
    return key


def code_digest(sources: list[str]) -> str:
    """SHA-256 of a submission's own code cells, in order."""
    h = hashlib.sha256()
    for source in sources:
        h.update(source.encode())
        h.update(b"\0")
    return h.hexdigest()


def hidden_seed(key: bytes, lab: str, grade_id: str, student: str, digest: str) -> int:
    """The seed of one hidden check for one submission (0 <= seed < 2**31)."""
    message = "\0".join((lab, grade_id, student, digest)).encode()
    return int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:4], "big") >> 1
