"""Conv1d / Conv2d (group 1, constant float32 weights) as im2col + the register-tiled GEMM.

Upstream legalizes Conv to a plain TIR loop nest and the CPU default pipeline schedules none of
it. Here an `RnncConv` node (see `absorb`: a Conv, any BatchNormalization folded into its weights,
and a Relu / Clip / LeakyRelu after it) becomes two kernels of ours:

- `im2col`: X [n, C, H, W] (or [n, C, L]) -> Col [n * Ho * Wo, C * kh * kw], padding read as zeros
  (no padded copy of X), K ordered (c, i, j) as ONNX's W [Cout, C, kh, kw] flattens;
- the conv GEMM: `gemm`'s register tiles over Col @ W', bias and activation in registers, each
  16-lane block stored straight into Y [n, Cout, Ho * Wo] (NCHW; the reshape to [n, Cout, Ho, Wo]
  is free), so no transpose follows.

A 1-D conv is the 2-D one with H = kh = 1. The spatial sizes are static (the batch `n` symbolic);
the frontend falls back to upstream's Conv where they are not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rnnc.compiler.tvm.dense import DenseSpec, pack_dense
from rnnc.compiler.tvm.emit import Emitter, Param, f32, prim_func
from rnnc.compiler.tvm.gemm import gemm_columns
from rnnc.compiler.tvm.spec import DEFAULT_TILES, LANES

ACTIVATIONS = ("Relu", "LeakyRelu", "Clip")


@dataclass(frozen=True)
class ConvSpec:
    rank: int  # spatial dims: 1 or 2
    c: int
    h: int  # 1 for a 1-D conv
    w: int
    cout: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    ph: int = 0  # padding before (the amount after only shapes Ho/Wo)
    pw: int = 0
    dh: int = 1
    dw: int = 1
    ho: int = 1
    wo: int = 1
    act: str | None = None  # None | Relu | LeakyRelu | Clip
    alpha: float = 0.01
    lo: float | None = None  # Clip bounds (None: unbounded)
    hi: float | None = None
    rows: int = DEFAULT_TILES.gemm_rows

    @property
    def k(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def p(self) -> int:
        return self.ho * self.wo

    @property
    def np_(self) -> int:
        return -(-self.cout // LANES) * LANES


    @property
    def x_shape(self) -> tuple:
        return ("n", self.c, self.h, self.w) if self.rank == 2 else ("n", self.c, self.w)


def output_size(size: int, k: int, stride: int, dilation: int, before: int, after: int) -> int:
    return (size + before + after - dilation * (k - 1) - 1) // stride + 1


def same_pads(size: int, k: int, stride: int, dilation: int, mode: str) -> tuple[int, int]:
    """ONNX's auto_pad SAME_UPPER / SAME_LOWER: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (small, total - small) if mode == "SAME_UPPER" else (total - small, small)


def pack_conv(spec: ConvSpec, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """W [Cout, C, kh, kw] (or [Cout, C, k]) -> the GEMM's packed [Np/16, K, 16]; b -> [Np]."""
    return pack_dense(DenseSpec(spec.k, spec.cout), w.reshape(spec.cout, spec.k).T, b)


def im2col_primfunc(spec: ConvSpec, name: str = "main"):
    import tvm.script

    return tvm.script.from_source(im2col_source(spec, name))


def conv_primfunc(spec: ConvSpec, name: str = "main"):
    import tvm.script

    return tvm.script.from_source(conv_source(spec, name))


def im2col_source(spec: ConvSpec, name: str = "main") -> str:
    """X, Pad -> Col [n * P, K]: Col[(b * Ho + oh) * Wo + ow, (c * kh + i) * kw + j] = X[b, c, ih, iw]
    (zero outside X), ih = oh * sh - ph + i * dh, iw = ow * sw - pw + j * dw."""
    s = spec
    # Pad [1] holds the padding value (0): a second input, because Relax's RewriteDataflowReshape
    # asks every one-input kernel whether it is a reshape, an analysis that fails on block-less TIR
    params = [Param("X", s.x_shape), Param("Pad", (1,)), Param("Col", (f"n * {s.p}", s.k), output=True)]
    e = Emitter()
    with prim_func(e, name, params, ("n",)), e.block(f"for r in T.parallel(n * {s.ho}):"):
        e.line(f"b: T.let[T.int64] = r // {s.ho}")
        e.line(f"oh: T.let[T.int64] = r % {s.ho}")
        with e.block(f"for ow, c, i, j in T.grid({s.wo}, {s.c}, {s.kh}, {s.kw}):"):
                e.line(f"ih: T.let[T.int64] = oh * {s.sh} - {s.ph} + T.int64(i) * {s.dh}")
                e.line(f"iw: T.let[T.int64] = T.int64(ow) * {s.sw} - {s.pw} + T.int64(j) * {s.dw}")
                ihc, iwc = f"T.max(T.min(ih, {s.h - 1}), 0)", f"T.max(T.min(iw, {s.w - 1}), 0)"
                load = f"X[b, c, {ihc}, {iwc}]" if s.rank == 2 else f"X[b, c, {iwc}]"
                inside = f"0 <= iw and iw < {s.w}" if s.rank == 1 else \
                    f"0 <= ih and ih < {s.h} and 0 <= iw and iw < {s.w}"
                e.line(f"Col[r * {s.wo} + ow, (c * {s.kh} + i) * {s.kw} + j] = "
                       f"T.if_then_else({inside}, {load}, Pad[0])")
    return e.text()


def conv_source(spec: ConvSpec, name: str = "main") -> str:
    """The GEMM: Col [n * P, K], W (packed), Bias [Np] -> Y [n, Cout, P]."""
    s = spec
    params = [Param("X", (f"n * {s.p}", s.k)), Param("W", (s.np_ // LANES, s.k, LANES)), Param("Bias", (s.np_,)),
              Param("Y", ("n", s.cout, s.p), output=True)]

    def store(e: Emitter, i: int, col: str, whole: bool) -> None:
        row = f"(m0 + {i}) // {s.p}, {{}}, (m0 + {i}) % {s.p}"
        with e.block("for l in T.vectorized(16):"):
            e.line(f"v[0, l] = acc{i}[c, l] + Bias[{col}]")
            e.line(_activation(s))
            if whole:
                e.line(f"Y[{row.format(col)}] = v[1, l]")
        if not whole:  # padded columns are not written (as in `dense`)
            with e.block("for l in T.serial(16):"), e.block(f"if {col} < {s.cout}:"):
                e.line(f"Y[{row.format(f'T.min({col}, {s.cout - 1})')}] = v[1, l]")

    e = Emitter()
    with prim_func(e, name, params, ("n",)):
        e.line(f"rows: T.let[T.int64] = n * {s.p}")
        gemm_columns(e, columns=s.cout, tile=s.rows, depth=s.k, x=lambda i: f"X[m0 + {i}, k]", store=store,
                     scratch=['v = T.alloc_buffer((4, 16), "float32")'])
    return e.text()


def _activation(s: ConvSpec) -> str:
    if s.act is None:
        return "v[1, l] = v[0, l]"
    if s.act == "Relu":
        return "v[1, l] = T.max(v[0, l], T.float32(0))"
    if s.act == "LeakyRelu":
        return f"v[1, l] = T.if_then_else(v[0, l] < T.float32(0), {f32(s.alpha)} * v[0, l], v[0, l])"
    if s.act == "Clip":
        v = "v[0, l]"
        if s.lo is not None:
            v = f"T.max({v}, {f32(s.lo)})"
        if s.hi is not None:
            v = f"T.min({v}, {f32(s.hi)})"
        return f"v[1, l] = {v}"
    raise ValueError(f"conv activation {s.act!r}: expected one of {', '.join(ACTIVATIONS)}")
