"""The dense head as one TIR kernel: Y[m, :] = act(X[m, :] @ W + b), rows symbolic.

`MatMul(x, W) -> Add(b) [-> Sigmoid/Tanh/Relu/LeakyRelu]` with constant W and b (what every spec
model with a head ends in) becomes this one function: the same register-tiled GEMM as the layers'
input projection (rows x 16-wide column panels, row tiles fastest so a thread's panel of W stays in
its L2), with the bias and the activation applied in registers before the store. The head runs
once per call, not per step, so it uses TVM's exact `T.sigmoid`/`T.tanh`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnc.compiler.tvm.kernels import LANES, _f


@dataclass(frozen=True)
class DenseSpec:
    k: int
    n: int
    act: str | None = None  # None | Sigmoid | Tanh | Relu | LeakyRelu
    alpha: float = 0.01
    rows: int = 4  # register tile rows

    @property
    def np_(self) -> int:
        return -(-self.n // LANES) * LANES

    def panel(self) -> int:
        blocks = self.np_ // LANES
        return next(c for c in (4, 3, 2, 1) if blocks % c == 0)


def pack_dense(spec: DenseSpec, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] -> [Np/16, K, 16] (zero-padded), b -> [Np]."""
    wp = np.zeros((spec.k, spec.np_), np.float32)
    wp[:, : spec.n] = w
    bias = np.zeros(spec.np_, np.float32)
    if b is not None:
        bias[: spec.n] = b
    return np.ascontiguousarray(wp.reshape(spec.k, spec.np_ // LANES, LANES).transpose(1, 0, 2)), bias


def dense_primfunc(spec: DenseSpec, name: str = "main"):
    import tvm.script

    return tvm.script.from_source(dense_source(spec, name))


def dense_source(spec: DenseSpec, name: str = "main") -> str:
    k, n, mr, nr = spec.k, spec.n, spec.rows, spec.panel()
    ncb = spec.np_ // LANES
    npn = ncb // nr
    L = [
        "@T.prim_func",
        f"def {name}(x_h: T.handle, w_h: T.handle, b_h: T.handle, y_h: T.handle):",
        '    T.func_attr({"tir.noalias": True})',
        "    rows = T.int64()",
        f'    X = T.match_buffer(x_h, (rows, {k}), "float32")',
        f'    W = T.match_buffer(w_h, ({ncb}, {k}, 16), "float32")',
        f'    Bias = T.match_buffer(b_h, ({spec.np_},), "float32")',
        f'    Y = T.match_buffer(y_h, (rows, {n}), "float32")',
        f"    nmt: T.let[T.int64] = rows // {mr}",
        f"    nm: T.let[T.int64] = nmt + rows % {mr}",
        f"    for w in T.parallel(nm * {npn}):",
        f"        pn: T.let[T.int64] = w // nm",  # row tiles fastest: see _gemm
        "        mi: T.let[T.int64] = w % nm",
        '        v = T.alloc_buffer((4, 16), "float32")',
        "        if mi < nmt:",
    ]
    for tile, m0 in ((mr, f"mi * {mr}"), (1, f"nmt * {mr} + (mi - nmt)")):
        ind = " " * 12
        L.append(ind + f"m0: T.let[T.int64] = {m0}")
        for i in range(tile):
            L += [ind + f'acc{i} = T.alloc_buffer(({nr}, 16), "float32")',
                  ind + f"for c, l in T.grid({nr}, 16):", ind + f"    acc{i}[c, l] = T.float32(0)"]
        L.append(ind + f"for k in T.serial({k}):")
        for i in range(tile):
            L += [ind + f"    for c in T.unroll({nr}):", ind + "        for l in T.vectorized(16):",
                  ind + f"            acc{i}[c, l] = acc{i}[c, l] + X[m0 + {i}, k] * W[pn * {nr} + c, k, l]"]
        for i in range(tile):
            L.append(ind + f"for c in T.unroll({nr}):")
            L.append(ind + "    for l in T.vectorized(16):")
            L.append(ind + f"        v[0, l] = acc{i}[c, l] + Bias[(pn * {nr} + c) * 16 + l]")
            L += [ind + "        " + s for s in _dense_act(spec)]
            col = f"(pn * {nr} + c) * 16 + l"
            if spec.np_ == n:
                L.append(ind + f"        Y[m0 + {i}, {col}] = v[1, l]")
            else:
                L.append(ind + f"    for l in T.serial(16):")
                L.append(ind + f"        if {col} < {n}:")
                L.append(ind + f"            Y[m0 + {i}, T.min({col}, {n - 1})] = v[1, l]")
        if tile == mr:
            L.append(" " * 8 + "else:")
    return "\n".join(L) + "\n"


def _dense_act(spec: DenseSpec) -> list[str]:
    if spec.act is None:
        return ["v[1, l] = v[0, l]"]
    if spec.act == "LeakyRelu":
        return [f"v[1, l] = T.if_then_else(v[0, l] < T.float32(0), {_f(spec.alpha)} * v[0, l], v[0, l])"]
    # the head is applied once, not per step: use the exact functions
    if spec.act == "Sigmoid":
        return ["v[1, l] = T.sigmoid(v[0, l])"]
    if spec.act == "Tanh":
        return ["v[1, l] = T.tanh(v[0, l])"]
    return ["v[1, l] = T.max(v[0, l], T.float32(0))"]
