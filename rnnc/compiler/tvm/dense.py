"""The dense head as one TIR kernel: Y[m, :] = act(X[m, :] @ W + b), rows symbolic.

`MatMul(x, W) -> Add(b) [-> Sigmoid/Tanh/Relu/LeakyRelu]` with constant W and b (what every spec
model with a head ends in) becomes this one function: the layers' register-tiled GEMM (`gemm`),
with the bias and the activation applied in registers before the store. The head runs once per
call, not per step, so it uses TVM's exact `T.sigmoid`/`T.tanh`.
It stays float32 in `tvm:bf16` and `tvm:int8` builds: it runs once per call, where the layers
read R every step, so its weights' bytes are not what bounds the time (`quant`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnc.compiler.tvm.emit import Emitter, Param, f32, prim_func
from rnnc.compiler.tvm.gemm import gemm_columns
from rnnc.compiler.tvm.spec import DEFAULT_TILES, LANES


@dataclass(frozen=True)
class DenseSpec:
    k: int
    n: int
    act: str | None = None  # None | Sigmoid | Tanh | Relu | LeakyRelu
    alpha: float = 0.01
    rows: int = DEFAULT_TILES.gemm_rows  # register tile rows

    @property
    def np_(self) -> int:
        return -(-self.n // LANES) * LANES


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
    """TVMScript of the head. Parameters: X [rows, K], W (packed), Bias [Np], then Y [rows, N]."""
    k, n = spec.k, spec.n
    params = [Param("X", ("rows", k)), Param("W", (spec.np_ // LANES, k, LANES)), Param("Bias", (spec.np_,)),
              Param("Y", ("rows", n), output=True)]

    def store(e: Emitter, i: int, col: str, whole: bool) -> None:
        with e.block("for l in T.vectorized(16):"):
            e.line(f"v[0, l] = acc{i}[c, l] + Bias[{col}]")
            e.line(_activation(spec))
            if whole:
                e.line(f"Y[m0 + {i}, {col}] = v[1, l]")
        if not whole:  # padded columns are not written; a scalar loop keeps the guard out of the vector code
            with e.block("for l in T.serial(16):"), e.block(f"if {col} < {n}:"):
                e.line(f"Y[m0 + {i}, T.min({col}, {n - 1})] = v[1, l]")

    e = Emitter()
    with prim_func(e, name, params, ("rows",)):
        gemm_columns(e, columns=n, tile=spec.rows, depth=k, x=lambda i: f"X[m0 + {i}, k]", store=store,
                     scratch=['v = T.alloc_buffer((4, 16), "float32")'])
    return e.text()


def _activation(spec: DenseSpec) -> str:
    if spec.act is None:
        return "v[1, l] = v[0, l]"
    if spec.act == "LeakyRelu":
        return f"v[1, l] = T.if_then_else(v[0, l] < T.float32(0), {f32(spec.alpha)} * v[0, l], v[0, l])"
    return {"Sigmoid": "v[1, l] = T.sigmoid(v[0, l])", "Tanh": "v[1, l] = T.tanh(v[0, l])",
            "Relu": "v[1, l] = T.max(v[0, l], T.float32(0))"}[spec.act]
