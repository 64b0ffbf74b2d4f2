"""The kinds of failure a user sees, each with its own exit code (SPEC section 2).

Everything a user can cause raises `UserError` (exit 2, one line per problem, no traceback): a bad
spec, flag, file or array, and a bad place to write (read-only, a file where a directory should
be). A compiled DIR whose files are not those compile wrote raises `ArtifactChanged`, and a machine
out of disk space or memory `OutOfResources`: one line each, exit 1. Everything else is a bug in
rnnc and is allowed to show a traceback.
"""
from __future__ import annotations

import threading

# Set by the CLI's SIGINT/SIGTERM handler. A runtime that turns the KeyboardInterrupt raised inside
# its own call into an error of its own (TVM's FFI can) must not make an interrupt a failed backend.
INTERRUPTED = threading.Event()


class UserError(Exception):
    """Bad input: a spec, a flag, a file. `problems` holds one line per problem."""

    exit_code = 2

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p] or ["bad input"]
        super().__init__("\n".join(self.problems))


class Unsupported(Exception):
    """A backend (or the TVM lowering) cannot take this model or target; the message says why.

    Not a user error: the backend is reported `skipped` with the reason and the others go on.
    """


class ArtifactChanged(Exception):
    """A file of a compiled DIR is changed, truncated or missing against the SHA-256 and size
    manifest.json records: refused before anything is loaded from DIR (exit 1, a failed check)."""

    exit_code = 1


class OutOfResources(Exception):
    """The machine ran out of disk space or memory: one line naming the path and what was needed
    (exit 1); what was being written is left as it was before."""

    exit_code = 1


def interrupted(err: BaseException) -> bool:
    """Whether `err` is, or stands for, the user's interrupt."""
    return isinstance(err, KeyboardInterrupt) or INTERRUPTED.is_set() or "KeyboardInterrupt" in str(err)
