"""The CUDA variant of the layer kernels: GPU TIR for the recurrent nodes, same signature as the CPU's.

Plain and correct before fast: one kernel launch for the input projection of every step (a thread
per output column, a block per row), then a host-side `for t in range(seq)` that launches one step
kernel per step (a thread per hidden unit, a block per (batch row, direction, unit tile)), so T
stays symbolic and the code flat in T. Gates use the exact `T.sigmoid`/`T.tanh`. The ordinary ops
go through Relax and are scheduled by TVM's dlight rules (the default CUDA pipeline); the layer
functions say `tir.is_scheduled` so those rules leave them alone.

Machines without a GPU build this (cross-compiled with TVM's CUDA codegen) but cannot verify it;
`rnnc.targets.tvm.can_verify("cuda")` gives the reason.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from rnnc.compiler.tvm.emit import Emitter, f32, prim_func
from rnnc.compiler.tvm.spec import LayerSpec, check, signature, state_index, time_index, y_index

THREADS = 128
_ATTRS = '"tir.noalias": True, "tirx.is_scheduled": True'
_LOCAL = 'T.alloc_buffer(({},), "float32", scope="local")'


def pack(spec: LayerSpec, w: np.ndarray, r: np.ndarray, b: np.ndarray | None,
         p: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The float32 constants by parameter name: W^T [D, I, G*H], R^T [D, H, G*H], folded bias
    [D, G*H] (and GRU's Rb of the new gate, Rbn [D, H]), P [D, 3, H]."""
    d_, g_, h_ = len(spec.directions), spec.gates, spec.hidden
    b = np.zeros((d_, 2 * g_ * h_)) if b is None else b
    wb, rb = b[:, : g_ * h_], b[:, g_ * h_ :]
    out = {"W": w.transpose(0, 2, 1), "R": r.transpose(0, 2, 1), "Bias": wb + rb}
    if spec.cell == "gru" and spec.linear_before_reset:
        out["Bias"][:, 2 * h_ :] = wb[:, 2 * h_ :]
        out["Rbn"] = rb[:, 2 * h_ :]
    if p is not None:
        out["P"] = np.asarray(p).reshape(d_, 3, h_)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def layer_primfunc(spec: LayerSpec, name: str = "main"):
    """The parsed PrimFunc of one layer."""
    import tvm.script

    return tvm.script.from_source(layer_source(spec, name))


def _act(name: str, x: str) -> str:
    return {"Sigmoid": f"T.sigmoid({x})", "Tanh": f"T.tanh({x})", "Relu": f"T.max({x}, T.float32(0))"}[name]


def layer_source(spec: LayerSpec, name: str = "main") -> str:
    """TVMScript of one layer; its parameters are `signature(spec, "cuda")`."""
    check(spec)
    g_, h_, d_ = spec.gates, spec.hidden, len(spec.directions)
    j = f"(jo * {THREADS} + tx)"
    e = Emitter()
    with prim_func(e, name, signature(spec, "cuda"), ("batch", "seq"), _ATTRS):
        e.line(f'XP = T.alloc_buffer(({d_}, seq * batch, {g_ * h_}), "float32")')
        e.line(f'Hs = T.alloc_buffer((2, {d_}, batch, {h_}), "float32")')
        e.line(f'Cs = T.alloc_buffer(({d_}, batch, {h_}), "float32")')
        e.line(f'RH = T.alloc_buffer(({d_}, batch, {h_}), "float32")')
        _projection(e, spec)
        with _per_unit(e, spec):
            e.line(f"Hs[0, d, b, {j}] = " + (f"H0[d, b, {j}]" if spec.initial_h else "T.float32(0)"))
            e.line(f"Cs[d, b, {j}] = " + (f"C0[d, b, {j}]" if spec.initial_c else "T.float32(0)"))
        with e.block("for t in T.serial(seq):"):
            if spec.cell == "gru" and not spec.linear_before_reset:  # two launches per step
                with _per_unit(e, spec):
                    _gru_zr(e, spec, j)
            with _per_unit(e, spec):
                _step(e, spec, j)
        if spec.yh_layout or spec.yc_layout:
            with _per_unit(e, spec):
                if spec.yh_layout:
                    e.line(f"Yh[{state_index(spec.yh_layout, spec, 'b', j)}] = Hs[seq % 2, d, b, {j}]")
                if spec.yc_layout:
                    e.line(f"Yc[{state_index(spec.yc_layout, spec, 'b', j)}] = Cs[d, b, {j}]")
    return e.text()


def _projection(e: Emitter, spec: LayerSpec) -> None:
    """XP[d, m, :] = X(m) @ W[d] + Bias[d] for every m = t*batch + b: a block per row, a thread per column."""
    n, d_ = spec.gates * spec.hidden, len(spec.directions)
    xrow = "X[m // batch, m % batch, k]" if spec.x_layout == "tbi" else "X[m % batch, m // batch, k]"
    col = f"c * {THREADS} + tx"
    with e.block('for m in T.thread_binding(seq * batch, thread="blockIdx.x"):'), \
            e.block(f'for d in T.thread_binding({d_}, thread="blockIdx.y"):'), \
            e.block(f'for c in T.thread_binding({-(-n // THREADS)}, thread="blockIdx.z"):'), \
            e.block(f'for tx in T.thread_binding({THREADS}, thread="threadIdx.x"):'), \
            e.block(f"if {col} < {n}:"):
        e.line(f"acc = {_LOCAL.format(1)}")
        e.line(f"acc[0] = Bias[d, {col}]")
        with e.block(f"for k in range({spec.input_size}):"):
            e.line(f"acc[0] = acc[0] + {xrow} * W[d, k, {col}]")
        e.line(f"XP[d, m, {col}] = acc[0]")


@contextmanager
def _per_unit(e: Emitter, spec: LayerSpec) -> Iterator[None]:
    """A thread per hidden unit j = jo * THREADS + tx, a block per (batch row b, direction d, unit tile jo)."""
    h_ = spec.hidden
    with e.block('for b in T.thread_binding(batch, thread="blockIdx.x"):'), \
            e.block(f'for d in T.thread_binding({len(spec.directions)}, thread="blockIdx.y"):'), \
            e.block(f'for jo in T.thread_binding({-(-h_ // THREADS)}, thread="blockIdx.z"):'), \
            e.block(f'for tx in T.thread_binding({THREADS}, thread="threadIdx.x"):'), \
            e.block(f"if jo * {THREADS} + tx < {h_}:"):
        yield


def _clip(spec: LayerSpec, expr: str) -> str:
    return expr if spec.clip is None else f"T.max(T.min({expr}, {f32(spec.clip)}), {f32(-spec.clip)})"


def _gru_zr(e: Emitter, spec: LayerSpec, j: str) -> None:
    """GRU with r before R, first launch: z (activated, kept in XP for the second) and RH = r * H."""
    h_, acts = spec.hidden, spec.acts
    e.lines([time_index(spec), "cur: T.let[T.int64] = t % 2",
             f"acc = {_LOCAL.format(2)}", f"v = {_LOCAL.format(2)}",
             "acc[0] = T.float32(0)", "acc[1] = T.float32(0)"])
    with e.block(f"for k in range({h_}):"):
        e.line(f"acc[0] = acc[0] + Hs[cur, d, b, k] * R[d, k, {j}]")
        e.line(f"acc[1] = acc[1] + Hs[cur, d, b, k] * R[d, k, {h_} + {j}]")
    for g in range(2):
        e.line(f"v[{g}] = {_act(acts[0], _clip(spec, f'acc[{g}] + XP[d, tt * batch + b, {g * h_} + {j}]'))}")
    e.line(f"XP[d, tt * batch + b, {j}] = v[0]")
    e.line(f"RH[d, b, {j}] = v[1] * Hs[cur, d, b, {j}]")


def _step(e: Emitter, spec: LayerSpec, j: str) -> None:
    """One unit's recurrent product, gates and state update at step t; Y in its layout."""
    g_, h_, acts = spec.gates, spec.hidden, spec.acts
    cs = f"Cs[d, b, {j}]"
    e.lines([time_index(spec), "cur: T.let[T.int64] = t % 2"])
    if spec.cell == "gru" and not spec.linear_before_reset:  # second launch: the new gate from RH
        e.lines([f"acc = {_LOCAL.format(1)}", f"v = {_LOCAL.format(8)}", "acc[0] = T.float32(0)"])
        with e.block(f"for k in range({h_}):"):
            e.line(f"acc[0] = acc[0] + RH[d, b, k] * R[d, k, {2 * h_} + {j}]")
        e.lines([f"v[2] = {_act(acts[1], _clip(spec, f'acc[0] + XP[d, tt * batch + b, {2 * h_} + {j}]'))}",
                 f"v[0] = XP[d, tt * batch + b, {j}]",
                 f"v[7] = (T.float32(1) - v[0]) * v[2] + v[0] * Hs[cur, d, b, {j}]"])
    else:
        e.lines([f"acc = {_LOCAL.format(g_)}", f"v = {_LOCAL.format(8)}"])
        with e.block(f"for g in T.unroll({g_}):"):
            e.line("acc[g] = T.float32(0)")
        with e.block(f"for k in range({h_}):"), e.block(f"for g in T.unroll({g_}):"):
            e.line(f"acc[g] = acc[g] + Hs[cur, d, b, k] * R[d, k, g * {h_} + {j}]")
        pre = [f"acc[{g}] + XP[d, tt * batch + b, {g * h_} + {j}]" for g in range(g_)]
        if spec.cell == "lstm":
            if spec.peepholes:  # i and f see C_{t-1}, o sees C_t (read after the update)
                pre = [f"{x} + P[d, {g}, {j}] * {cs}" if g < 3 else x for g, x in enumerate(pre)]
            pre = [_clip(spec, x) for x in pre]
            e.lines([f"v[0] = {_act(acts[0], pre[0])}", f"v[1] = {_act(acts[0], pre[2])}",
                     f"v[2] = {_act(acts[1], pre[3])}", f"{cs} = v[1] * {cs} + v[0] * v[2]",
                     f"v[3] = {_act(acts[0], pre[1])}", f"v[7] = v[3] * {_act(acts[2], cs)}"])
        elif spec.cell == "gru":
            nx = _clip(spec, f"XP[d, tt * batch + b, {2 * h_} + {j}] + v[1] * (acc[2] + Rbn[d, {j}])")
            e.lines([f"v[0] = {_act(acts[0], _clip(spec, pre[0]))}", f"v[1] = {_act(acts[0], _clip(spec, pre[1]))}",
                     f"v[2] = {_act(acts[1], nx)}",
                     f"v[7] = (T.float32(1) - v[0]) * v[2] + v[0] * Hs[cur, d, b, {j}]"])
        else:
            e.line(f"v[7] = {_act(acts[0], _clip(spec, pre[0]))}")
    e.line(f"Hs[1 - cur, d, b, {j}] = v[7]")
    if spec.y_layout:
        e.line(f"Y[{y_index(spec, 'tt', 'b', j)}] = v[7]")


def describe() -> dict[str, Any]:
    return {"threads_per_block": THREADS, "step": "one launch per step"}
