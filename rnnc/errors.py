"""The two kinds of failure a user sees, each with its own exit code (SPEC section 2).

Everything a user can cause raises `UserError` (exit 2, one line per problem, no traceback);
everything else is a bug in rnnc and is allowed to show a traceback.
"""
from __future__ import annotations


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
