"""The CUDA variant of the layer kernels: same graph walk, GPU TIR for the recurrent nodes.

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

from typing import Any

import numpy as np

from rnnc.compiler.tvm import kernels
from rnnc.compiler.tvm.kernels import YH_LAYOUTS, Y_LAYOUTS, LayerSpec
from rnnc.compiler.tvm.lower import _Lowering

THREADS = 128


class CudaLowering(_Lowering):
    def _layer_kernel(self, spec: LayerSpec, name: str, w: np.ndarray, r: np.ndarray, b: np.ndarray | None):
        import tvm.script

        return tvm.script.from_source(layer_source(spec, name)), pack_weights(spec, w, r, b)

    def _peepholes(self, spec: LayerSpec, p: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(p, np.float32).reshape(len(spec.directions), 3, spec.hidden))


def pack_weights(spec: LayerSpec, w: np.ndarray, r: np.ndarray, b: np.ndarray | None) -> list[np.ndarray]:
    """W^T [D, I, G*H], R^T [D, H, G*H], folded bias [D, G*H] (and GRU's Rb of the new gate [D, H])."""
    d_, g_, h_ = len(spec.directions), spec.gates, spec.hidden
    b = np.zeros((d_, 2 * g_ * h_)) if b is None else b
    wb, rb = b[:, : g_ * h_], b[:, g_ * h_ :]
    folded = wb + rb
    out = [w.transpose(0, 2, 1), r.transpose(0, 2, 1)]
    if spec.cell == "gru" and spec.linear_before_reset:
        folded = folded.copy()
        folded[:, 2 * h_ :] = wb[:, 2 * h_ :]
        out += [folded, rb[:, 2 * h_ :]]
    else:
        out.append(folded)
    return [np.ascontiguousarray(a, dtype=np.float32) for a in out]


def _act(name: str, x: str) -> str:
    return {"Sigmoid": f"T.sigmoid({x})", "Tanh": f"T.tanh({x})", "Relu": f"T.max({x}, T.float32(0))"}[name]


def layer_source(spec: LayerSpec, name: str) -> str:
    g_, h_, i_, d_ = spec.gates, spec.hidden, spec.input_size, len(spec.directions)
    n = g_ * h_
    fmt = dict(D=d_, H=h_, DH=d_ * h_)
    params = [("X", "(seq, batch, {I})" if spec.x_layout == "tbi" else "(batch, seq, {I})"),
              ("W", "({D}, {I}, {N})"), ("R", "({D}, {H}, {N})"), ("Bias", "({D}, {N})")]
    if spec.cell == "gru" and spec.linear_before_reset:
        params.append(("Rbn", "({D}, {H})"))
    if spec.initial_h:
        params.append(("H0", "({D}, batch, {H})"))
    if spec.initial_c:
        params.append(("C0", "({D}, batch, {H})"))
    if spec.peepholes:
        params.append(("P", "({D}, 3, {H})"))
    for p, lay, table in (("Y", spec.y_layout, Y_LAYOUTS), ("Yh", spec.yh_layout, YH_LAYOUTS), ("Yc", spec.yc_layout, YH_LAYOUTS)):
        if lay:
            params.append((p, table[lay][0]))
    sub = dict(I=i_, D=d_, H=h_, N=n, DH=d_ * h_)
    L = ["@T.prim_func", f"def {name}({', '.join(p.lower() + '_h: T.handle' for p, _ in params)}):",
         '    T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})',
         "    batch = T.int64()", "    seq = T.int64()"]
    L += [f'    {p} = T.match_buffer({p.lower()}_h, {s.format(**sub)}, "float32")' for p, s in params]
    L += [f'    XP = T.alloc_buffer(({d_}, seq * batch, {n}), "float32")',
          f'    Hs = T.alloc_buffer((2, {d_}, batch, {h_}), "float32")',
          f'    Cs = T.alloc_buffer(({d_}, batch, {h_}), "float32")',
          f'    RH = T.alloc_buffer(({d_}, batch, {h_}), "float32")']
    xrow = "X[m // batch, m % batch, k]" if spec.x_layout == "tbi" else "X[m % batch, m // batch, k]"
    nb = -(-n // THREADS)
    L += [
        "    for m in T.thread_binding(seq * batch, thread=\"blockIdx.x\"):",
        f"        for d in T.thread_binding({d_}, thread=\"blockIdx.y\"):",
        f"            for c in T.thread_binding({nb}, thread=\"blockIdx.z\"):",
        f"                for tx in T.thread_binding({THREADS}, thread=\"threadIdx.x\"):",
        f"                    if c * {THREADS} + tx < {n}:",
        '                        acc = T.alloc_buffer((1,), "float32", scope="local")',
        f"                        acc[0] = Bias[d, c * {THREADS} + tx]",
        f"                        for k in range({i_}):",
        f"                            acc[0] = acc[0] + {xrow} * W[d, k, c * {THREADS} + tx]",
        f"                        XP[d, m, c * {THREADS} + tx] = acc[0]",
    ]
    nj = -(-h_ // THREADS)
    head = [
        "for b in T.thread_binding(batch, thread=\"blockIdx.x\"):",
        f"    for d in T.thread_binding({d_}, thread=\"blockIdx.y\"):",
        f"        for jo in T.thread_binding({nj}, thread=\"blockIdx.z\"):",
        f"            for tx in T.thread_binding({THREADS}, thread=\"threadIdx.x\"):",
        f"                if jo * {THREADS} + tx < {h_}:",
    ]
    j = f"(jo * {THREADS} + tx)"
    L += ["    " + s for s in head]
    L.append(f"                        Hs[0, d, b, {j}] = " + (f"H0[d, b, {j}]" if spec.initial_h else "T.float32(0)"))
    L.append(f"                        Cs[d, b, {j}] = " + (f"C0[d, b, {j}]" if spec.initial_c else "T.float32(0)"))
    L.append("    for t in T.serial(seq):")
    L += ["        " + s for s in head]
    body = [
        kernels._time_index(spec),
        "cur: T.let[T.int64] = t % 2",
        f'acc = T.alloc_buffer(({g_},), "float32", scope="local")',
        f'v = T.alloc_buffer((8,), "float32", scope="local")',
        f"for g in T.unroll({g_}):",
        "    acc[g] = T.float32(0)",
        f"for k in range({h_}):",
        f"    for g in T.unroll({g_}):",
        f"        acc[g] = acc[g] + Hs[cur, d, b, k] * R[d, k, g * {h_} + {j}]",
    ]
    acts = spec.acts
    clip = (lambda e: e) if spec.clip is None else (lambda e: f"T.max(T.min({e}, T.float32({spec.clip!r})), T.float32({-spec.clip!r}))")
    pre = [clip(f"acc[{g}] + XP[d, tt * batch + b, {g * h_} + {j}]") for g in range(g_)]
    cs = f"Cs[d, b, {j}]"
    if spec.cell == "lstm":
        if spec.peepholes:  # i and f see C_{t-1}, o sees C_t (read after the update)
            pre = [clip(f"acc[{g}] + XP[d, tt * batch + b, {g * h_} + {j}] + P[d, {g}, {j}] * {cs}") if g < 3
                   else pre[g] for g in range(g_)]
        body += [f"v[0] = {_act(acts[0], pre[0])}", f"v[1] = {_act(acts[0], pre[2])}", f"v[2] = {_act(acts[1], pre[3])}",
                 f"{cs} = v[1] * {cs} + v[0] * v[2]", f"v[3] = {_act(acts[0], pre[1])}",
                 f"v[7] = v[3] * {_act(acts[2], cs)}"]
    elif spec.cell == "gru" and not spec.linear_before_reset:  # two launches per step
        two = [
            kernels._time_index(spec), "cur: T.let[T.int64] = t % 2",
            'acc = T.alloc_buffer((2,), "float32", scope="local")', 'v = T.alloc_buffer((2,), "float32", scope="local")',
            "acc[0] = T.float32(0)", "acc[1] = T.float32(0)",
            f"for k in range({h_}):",
            f"    acc[0] = acc[0] + Hs[cur, d, b, k] * R[d, k, {j}]",
            f"    acc[1] = acc[1] + Hs[cur, d, b, k] * R[d, k, {h_} + {j}]",
            f"v[0] = {_act(acts[0], pre[0])}", f"v[1] = {_act(acts[0], pre[1])}",
            f"XP[d, tt * batch + b, {j}] = v[0]",  # z, activated, for the second launch
            f"RH[d, b, {j}] = v[1] * Hs[cur, d, b, {j}]",
        ]
        L += ["                            " + x for x in two]
        L += ["        " + x for x in head]
        body = [
            kernels._time_index(spec), "cur: T.let[T.int64] = t % 2",
            'acc = T.alloc_buffer((1,), "float32", scope="local")', 'v = T.alloc_buffer((8,), "float32", scope="local")',
            "acc[0] = T.float32(0)",
            f"for k in range({h_}):",
            f"    acc[0] = acc[0] + RH[d, b, k] * R[d, k, {2 * h_} + {j}]",
            f"v[2] = {_act(acts[1], clip(f'acc[0] + XP[d, tt * batch + b, {2 * h_} + {j}]'))}",
            f"v[0] = XP[d, tt * batch + b, {j}]",
            f"v[7] = (T.float32(1) - v[0]) * v[2] + v[0] * Hs[cur, d, b, {j}]",
        ]
    elif spec.cell == "gru":
        nx = clip(f"XP[d, tt * batch + b, {2 * h_} + {j}] + v[1] * (acc[2] + Rbn[d, {j}])")
        body += [f"v[0] = {_act(acts[0], pre[0])}", f"v[1] = {_act(acts[0], pre[1])}", f"v[2] = {_act(acts[1], nx)}",
                 f"v[7] = (T.float32(1) - v[0]) * v[2] + v[0] * Hs[cur, d, b, {j}]"]
    else:
        body.append(f"v[7] = {_act(acts[0], pre[0])}")
    body.append(f"Hs[1 - cur, d, b, {j}] = v[7]")
    if spec.y_layout:
        body.append(f"Y[{Y_LAYOUTS[spec.y_layout][1].format(tt='tt', j=j, **fmt)}] = v[7]")
    L += ["                            " + s for s in body]
    if spec.yh_layout or spec.yc_layout:
        L += ["    " + s for s in head]
        if spec.yh_layout:
            L.append(f"                        Yh[{YH_LAYOUTS[spec.yh_layout][1].format(j=j, **fmt)}] = Hs[seq % 2, d, b, {j}]")
        if spec.yc_layout:
            L.append(f"                        Yc[{YH_LAYOUTS[spec.yc_layout][1].format(j=j, **fmt)}] = {cs}")
    return "\n".join(L) + "\n"


def describe() -> dict[str, Any]:
    return {"threads_per_block": THREADS, "step": "one launch per step"}
