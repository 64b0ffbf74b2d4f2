"""Softmax over the last axis as one TIR kernel: rows in parallel, 16 lanes wide, a polynomial exp.

A language model's head ends in Softmax over its vocabulary for every step of every row; TVM's
own (legalized) softmax runs those rows one after the other and `exp` as a scalar libm call per
element: 0.61 ms for 16 x 10000 on the 2-core Sapphire Rapids VM, where ONNX Runtime's whole
model (two LSTM 256 layers and the 256 x 10000 head) took 0.80 ms. Here a row is three passes:
its max, exp(x - max) (Cephes' polynomial, `cell.exp_lines`) stored with its sum, then the scale.
"""
from __future__ import annotations

from rnnc.compiler.tvm import cell
from rnnc.compiler.tvm.emit import Emitter, Param, prim_func
from rnnc.compiler.tvm.spec import LANES


def softmax_primfunc(n: int, name: str = "main"):
    import tvm.script

    # TVM's verifier of block-free TIR refuses the root block; the s_tir passes lower it
    return tvm.script.from_source(softmax_source(n, name), check_well_formed=False)


def softmax_source(n: int, name: str = "main") -> str:
    """TVMScript of Y[m, :] = softmax(X[m, :]) for rows m symbolic, n columns."""
    full = n // LANES * LANES
    e = Emitter()
    # in a root block: Relax asks a call whose output is as large as its input whether it is a
    # reshape (RewriteDataflowReshape), which needs the body to be one block
    params = [Param("X", ("rows", n)), Param("Y", ("rows", n), output=True)]
    with prim_func(e, name, params, ("rows",)):
        with e.block('with T.sblock("root"):'), e.block("for m in T.parallel(rows):"):
            e.line('v = T.alloc_buffer((4, 16), "float32")')
            e.line('acc = T.alloc_buffer((16,), "float32")')
            e.line('r = T.alloc_buffer((2,), "float32")')
            with e.block("for l in T.vectorized(16):"):
                e.line("acc[l] = T.float32(-3.4028234663852886e38)")
            _blocks(e, full, n, lambda k: [f"acc[l] = T.max(acc[l], X[m, {k}])"], "acc[0] = T.max(acc[0], X[m, {k}])")
            e.line("r[0] = acc[0]")
            with e.block("for l in T.serial(1, 16):"):
                e.line("r[0] = T.max(r[0], acc[l])")
            with e.block("for l in T.vectorized(16):"):
                e.line("acc[l] = T.float32(0)")
            _blocks(e, full, n, lambda k: cell.exp_lines(f"X[m, {k}] - r[0]", f"Y[m, {k}]") + [f"acc[l] = acc[l] + Y[m, {k}]"])
            e.line("r[1] = T.float32(0)")
            with e.block("for l in T.serial(16):"):
                e.line("r[1] = r[1] + acc[l]")
            e.line("r[1] = T.float32(1) / r[1]")
            _blocks(e, full, n, lambda k: [f"Y[m, {k}] = Y[m, {k}] * r[1]"])
    return e.text()


def _blocks(e: Emitter, full: int, n: int, body, scalar: str | None = None) -> None:
    """`body(k)` over the row: 16-lane blocks, then the columns past the last whole block one by
    one (lane l of the tail, so the per-lane buffers still index by l; `scalar` in its place where
    the vector statement would fold across lanes)."""
    if full:
        with e.block(f"for kb in T.serial({full // LANES}):"), e.block("for l in T.vectorized(16):"):
            e.lines(body("kb * 16 + l"))
    if n > full:
        with e.block(f"for l in T.serial({n - full}):"):
            if scalar is not None:
                e.line(scalar.format(k=f"{full} + l"))
            else:
                e.lines(body(f"{full} + l"))
