"""Writing TVMScript text: an emitter whose blocks indent what is emitted inside them.

The kernels are generated as TVMScript and parsed with `tvm.script.from_source`, so every variant
is plain code one can print and read. The nesting of the generated code follows the nesting of the
`with e.block(...)` statements that write it; no generator counts spaces.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

INDENT = "    "


class Emitter:
    """Lines of TVMScript at the current depth."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._depth = 0

    def line(self, text: str) -> None:
        self._lines.append(INDENT * self._depth + text)

    def lines(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.line(text)

    @contextmanager
    def block(self, header: str | None) -> Iterator[None]:
        """`header` (a `for`, `if`, `else:`, `def` line), then its body one level deeper.

        None opens no block and emits nothing, so an optional wrapper (a parallel region only in
        the parallel variant) reads as one with-statement."""
        if header is None:
            yield
            return
        self.line(header)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def f32(x: float) -> str:
    """A float32 literal that reads back exactly (repr round-trips)."""
    return f"T.float32({x!r})"


@dataclass(frozen=True)
class Param:
    """One buffer parameter of a PrimFunc: its name, shape ("seq", "batch", "rows": symbolic) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    output: bool = False

    @property
    def handle(self) -> str:
        return f"{self.name.lower()}_h"

    def match_buffer(self) -> str:
        dims = ", ".join(str(s) for s in self.shape) + ("," if len(self.shape) == 1 else "")
        return f'{self.name} = T.match_buffer({self.handle}, ({dims}), "{self.dtype}")'


@contextmanager
def prim_func(e: Emitter, name: str, params: Iterable[Param], dims: Iterable[str],
              attrs: str = '"tir.noalias": True') -> Iterator[None]:
    """`@T.prim_func def name(...)`: the attributes, the symbolic dims, a buffer per parameter."""
    params = list(params)
    e.line("@T.prim_func")
    with e.block(f"def {name}({', '.join(f'{p.handle}: T.handle' for p in params)}):"):
        e.line(f"T.func_attr({{{attrs}}})")
        e.lines(f"{dim} = T.int64()" for dim in dims)
        e.lines(p.match_buffer() for p in params)
        yield
