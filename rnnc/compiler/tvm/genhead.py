"""The generation kernel's head, per row tile and step: logits from the top layer's new h (the
register-tiled `gemm.accumulate`), then for softmax the argmax (per lane while the logits are
stored, then across the 16 lanes: lowest index on ties, as numpy's), one pass of exp and its sum
(a Cephes-style polynomial exp: TVM's `T.exp` is a scalar libm call per lane) and one of the scaled
store; for a features head the activation (`cell._act`'s fast sigmoid and tanh). It writes
output[b, s, :], generated[b, s] and the next step's input (Tok, or Xf).
"""
from __future__ import annotations

from rnnc.compiler.tvm import cell
from rnnc.compiler.tvm.emit import Emitter
from rnnc.compiler.tvm.gemm import accumulate, column_parts
from rnnc.compiler.tvm.genspec import GenSpec
from rnnc.compiler.tvm.spec import LANES

__all__ = ["head", "store_out"]


def head(e: Emitter, spec: GenSpec, rows: int) -> None:
    """Rows b0 .. b0+rows-1 of step s: logits from the top layer's new h, then softmax and argmax
    (or the activation), the outputs, and the next step's input."""
    top = spec.layers - 1
    if spec.softmax:
        e.line(f'mx = T.alloc_buffer(({rows}, 16), "float32")')
        e.line(f'ix = T.alloc_buffer(({rows}, 16), "int64")')
        with e.block(f"for i, l in T.grid({rows}, 16):"):
            e.line("mx[i, l] = T.float32(-3.0e38)")
            e.line("ix[i, l] = T.int64(0)")
    e.line('v = T.alloc_buffer((8, 16), "float32")')
    for first, nr, panels in column_parts(spec.np_ // LANES):  # the padded columns' logits are stored too
        with e.block(f"for pn in T.serial(T.int64({panels})):"):
            block = f"{first} + pn * {nr} + c" if first else f"pn * {nr} + c"
            accumulate(e, rows, nr, "c", spec.hidden, lambda i: f"Hs[1 - cur, {top}, b0 + {i}, k] * Wd[{block}, k, l]")
            for i in range(rows):
                with e.block(f"for c in T.unroll({nr}):"):
                    e.line(f"col: T.let[T.int64] = ({block}) * 16")
                    _store_logits(e, spec, i)
    if spec.softmax:
        with e.block(f"for i in T.serial({rows}):"):
            _softmax(e, spec)


def _store_logits(e: Emitter, spec: GenSpec, i: int) -> None:
    b = f"b0 + {i}"
    if spec.softmax:  # per lane: the max so far and the first column that reached it
        with e.block("for l in T.vectorized(16):"):
            e.line(f"Lg[{b}, col + l] = acc{i}[c, l] + Bd[col + l]")
            e.line(f"ix[{i}, l] = T.if_then_else(Lg[{b}, col + l] > mx[{i}, l], col + l, ix[{i}, l])")
            e.line(f"mx[{i}, l] = T.max(mx[{i}, l], Lg[{b}, col + l])")
        return
    with e.block("for l in T.vectorized(16):"):
        e.line(f"v[3, l] = acc{i}[c, l] + Bd[col + l]")
        e.lines(_activation(spec.head, f"Xf[{b}, col + l]", "v[3, l]"))
    store_out(e, spec, b, f"Xf[{b}, col + l]", "col")


def store_out(e: Emitter, spec: GenSpec, b: str, value: str, col: str) -> None:
    """Out[b, s, col + l] (many_to_one: Out[b, col + l]) = value for the 16 lanes of a column
    block, the padded ones left out."""
    n = spec.units
    row = b if spec.sequence == "many_to_one" else f"{b}, s"
    if n % LANES == 0:
        with e.block("for l in T.vectorized(16):"):
            e.line(f"Out[{row}, {col} + l] = {value}")
        return
    with e.block(f"if {col} + 16 <= {n}:"), e.block("for l in T.vectorized(16):"):
        e.line(f"Out[{row}, {col} + l] = {value}")
    with e.block("else:"), e.block(f"for l in T.serial({n % LANES}):"):
        e.line(f"Out[{row}, T.min({col} + l, {n - 1})] = {value}")


def _softmax(e: Emitter, spec: GenSpec) -> None:
    """Row b0 + i: the max and argmax across lanes, exp and its sum in one pass, then the scaled store."""
    b, nb = "b0 + i", spec.np_ // LANES
    e.line('r = T.alloc_buffer((2,), "float32")')
    e.line('ri = T.alloc_buffer((1,), "int64")')
    e.line('sm = T.alloc_buffer((16,), "float32")')
    e.line("r[0] = mx[i, 0]")
    e.line("ri[0] = ix[i, 0]")
    with e.block("for l in T.serial(15):"), e.block(
            "if mx[i, l + 1] > r[0] or (mx[i, l + 1] == r[0] and ix[i, l + 1] < ri[0]):"):
        e.line("r[0] = mx[i, l + 1]")
        e.line("ri[0] = ix[i, l + 1]")
    with e.block("for l in T.vectorized(16):"):
        e.line("sm[l] = T.float32(0)")
    with e.block(f"for jb in T.serial({nb}):"), e.block("for l in T.vectorized(16):"):
        e.lines(cell.exp_lines(f"Lg[{b}, jb * 16 + l] - r[0]", f"Lg[{b}, jb * 16 + l]"))
        e.line(f"sm[l] = sm[l] + Lg[{b}, jb * 16 + l]")
    e.line("r[1] = T.float32(0)")
    with e.block("for l in T.serial(16):"):
        e.line("r[1] = r[1] + sm[l]")
    e.line("r[1] = T.float32(1) / r[1]")
    with e.block(f"for jb in T.serial({nb}):"):
        if not spec.tokens and spec.sequence is None:  # the probabilities are the next step's features
            with e.block("for l in T.vectorized(16):"):
                e.line(f"Xf[{b}, jb * 16 + l] = Lg[{b}, jb * 16 + l] * r[1]")
        store_out(e, spec, b, f"Lg[{b}, jb * 16 + l] * r[1]", "jb * 16")
    if spec.tokens and spec.sequence is None:
        e.line(f"Gen[{b}, s] = ri[0]")
        e.line(f"Tok[{b}] = ri[0]")


def _activation(head: str, dst: str, src: str) -> list[str]:
    if head == "none":
        return [f"{dst} = {src}"]
    if head == "relu":
        return [f"{dst} = T.max({src}, T.float32(0))"]
    if head == "leaky_relu":
        return [f"{dst} = T.if_then_else({src} < T.float32(0), T.float32(0.01) * {src}, {src})"]
    return cell._act({"sigmoid": "Sigmoid", "tanh": "Tanh"}[head], dst, src, "v[{s}, l]")
