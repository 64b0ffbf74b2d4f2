"""The CPU kernels' gate arithmetic of one batch row: activations, state update, the store of Y.

Written in the ONNX operator pages' gate orders (LSTM i, o, f, c and peepholes i, o, f; GRU z, r,
h), vectorized over the 16 lanes of a column tile. tanh is the rational approximation of
Eigen/TVM's fast_tanh (float32 error ~1e-7; 1.4-2x faster than `T.tanh` here), sigmoid =
0.5 tanh(x/2) + 0.5. Per-lane temporaries live in the buffer `v`: a scalar let-bound inside a
`T.vectorized` loop would give every lane the last lane's value (TVM 0.27).
"""
from __future__ import annotations

from rnnc.compiler.tvm import quant
from rnnc.compiler.tvm.emit import Emitter, f32
from rnnc.compiler.tvm.spec import LayerSpec, y_index

_TANH_A = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_B = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def two_phase(spec: LayerSpec) -> bool:
    """GRU with r applied before R: z, r and r * H for every unit, a barrier, then the new gate."""
    return spec.cell == "gru" and not spec.linear_before_reset


def row_update(e: Emitter, spec: LayerSpec, phase: str) -> None:
    """Row br = b0 + i of the tile, units jo * 16 + l: gates, state, Y."""
    e.line("br: T.let[T.int64] = b0 + i")
    if not spec.seq_lens:
        _gates(e, spec, phase, "tt")
        return
    e.line(f"ttr: T.let[T.int64] = {row_time(spec, 'br')}")
    with e.block('if t < T.Cast("int64", Lens[br]):'):
        _gates(e, spec, phase, "ttr")
    if phase != "zr":  # past its length a row keeps its state, and Y is 0
        with e.block("else:"):
            with e.block("for l in T.vectorized(16):"):
                e.line("Hs[1 - cur, d, br, jo * 16 + l] = Hs[cur, d, br, jo * 16 + l]")
            if spec.y_layout:
                _store_y(e, spec, "ttr", "T.float32(0)")


def row_time(spec: LayerSpec, b: str) -> str:
    """Under sequence_lens: the step row b handles at iteration t; past its length, t itself."""
    n = f'T.Cast("int64", Lens[{b}])'
    back = f"T.if_then_else(t < {n}, {n} - 1 - t, t)"
    rev = [i for i, x in enumerate(spec.directions) if x == "reverse"]
    if not rev:
        return "t"
    if len(spec.directions) == 1:
        return back
    return f"T.if_then_else(d == {rev[0]}, {back}, t)"


def _gates(e: Emitter, spec: LayerSpec, phase: str, tt: str) -> None:
    e.line('v = T.alloc_buffer((8, 16), "float32")')
    with e.block("for l in T.vectorized(16):"):
        e.lines(_update(spec, "br", phase, tt))
    if spec.y_layout and phase != "zr":
        _store_y(e, spec, tt, "Hs[1 - cur, d, br, jo * 16 + l]")


def _store_y(e: Emitter, spec: LayerSpec, tt: str, value: str) -> None:
    h_ = spec.hidden
    if spec.hp == h_:
        with e.block("for l in T.vectorized(16):"):
            e.line(f"Y[{y_index(spec, tt, 'br', 'jo * 16 + l')}] = {value}")
        return
    # padded units are not written; a scalar loop keeps the guard out of the vector code
    with e.block("for l in T.serial(16):"), e.block(f"if jo * 16 + l < {h_}:"):
        e.line(f"Y[{y_index(spec, tt, 'br', f'T.min(jo * 16 + l, {h_ - 1})')}] = {value}")


def _update(spec: LayerSpec, b: str, phase: str, tt: str) -> list[str]:
    """The fused gates and state update of row b, lane l, into Hs[1 - cur] and v[7, l]."""
    g_ = spec.gates
    pre = [f"XP[d, {tt} * batch + {b}, (jo * {g_} + {g}) * 16 + l]" for g in range(g_)]
    acts = spec.acts

    def act(k: int, dst: str, src: str) -> list[str]:
        return _act(acts[k], dst, src, "v[{s}, l]")  # the lowering checks both directions agree

    def clip(expr: str) -> str:
        if spec.clip is None:
            return expr
        return f"T.max(T.min({expr}, {f32(spec.clip)}), {f32(-spec.clip)})"

    cs = f"Cs[d, {b}, jo * 16 + l]"
    body: list[str] = []
    if spec.cell == "lstm":  # ONNX gate order i, o, f, c; peepholes P i, o, f
        if spec.peepholes:
            pre[0] += f" + P[d, 0, jo * 16 + l] * {cs}"
            pre[2] += f" + P[d, 2, jo * 16 + l] * {cs}"
            pre[1] += f" + P[d, 1, jo * 16 + l] * {cs}"  # read after C is updated: C_t
        body += act(0, "v[4, l]", clip(pre[0]))  # i
        body += act(0, "v[5, l]", clip(pre[2]))  # f
        body += act(1, "v[6, l]", clip(pre[3]))  # c~
        body.append(f"{cs} = v[5, l] * {cs} + v[4, l] * v[6, l]")
        body += act(0, "v[4, l]", clip(pre[1]))  # o
        body += act(2, "v[5, l]", cs)
        body.append("v[7, l] = v[4, l] * v[5, l]")
    elif phase == "zr":  # GRU, r before R: z (kept in XP, activated) and RH = r * H
        body += act(0, "v[4, l]", clip(pre[0]))
        body.append(f"{pre[0]} = v[4, l]")
        body += act(0, "v[5, l]", clip(pre[1]))
        body.append(f"RH[d, {b}, jo * 16 + l] = v[5, l] * Hs[cur, d, {b}, jo * 16 + l]")
        return body
    elif phase == "n":  # GRU, r before R: XP holds the whole new-gate input, biases folded
        body += act(1, "v[6, l]", clip(pre[2]))
        body.append(f"v[7, l] = (T.float32(1) - {pre[0]}) * v[6, l] + {pre[0]} * Hs[cur, d, {b}, jo * 16 + l]")
    elif spec.cell == "gru":  # ONNX gate order z, r, h; linear_before_reset = 1
        body += act(0, "v[4, l]", clip(pre[0]))  # z
        body += act(0, "v[5, l]", clip(pre[1]))  # r
        body += act(1, "v[6, l]", clip(f"{pre[2]} + v[5, l] * (rn[i, l] + Rbn[d, jo * 16 + l])"))
        body.append(f"v[7, l] = (T.float32(1) - v[4, l]) * v[6, l] + v[4, l] * Hs[cur, d, {b}, jo * 16 + l]")
    else:
        body += act(0, "v[7, l]", clip(pre[0]))
    body.append(f"Hs[1 - cur, d, {b}, jo * 16 + l] = v[7, l]")
    if spec.amx_from and spec.precision == "bf16":  # the AMX body's next products read H in bf16 (`amx`)
        body.append(f"Hb[1 - cur, d, {b}, jo * 16 + l] = {quant.bf16('v[7, l]')}")
    if spec.fixed_h:  # the next step's products read H in uint8 at the fixed scale (`quant`)
        body.append(f"{quant.hq(spec, b, 'jo * 16 + l', '1 - cur')} = {quant.fixed_u8('v[7, l]')}")
    return body


def _act(name: str, dst: str, src: str, tmp: str) -> list[str]:
    """Statements (inside a vectorized loop over l) computing dst[l] = act(src[l]); tmp has 3 slots."""
    if name == "Relu":
        return [f"{dst} = T.max(({src}), T.float32(0))"]
    scale = "T.float32(0.5) * " if name == "Sigmoid" else ""
    x, x2, p = (tmp.format(s=s) for s in range(3))
    out = [
        f"{x} = T.max(T.min({scale}({src}), T.float32(7.90531110763549805)), T.float32(-7.90531110763549805))",
        f"{x2} = {x} * {x}",
    ]
    num = f32(_TANH_A[-1])
    for a in reversed(_TANH_A[:-1]):
        num = f"({num} * {x2} + {f32(a)})"
    den = f32(_TANH_B[-1])
    for b in reversed(_TANH_B[:-1]):
        den = f"({den} * {x2} + {f32(b)})"
    out.append(f"{p} = {num} * {x} / {den}")
    out.append(f"{dst} = T.float32(0.5) * {p} + T.float32(0.5)" if name == "Sigmoid" else f"{dst} = {p}")
    return out


# Cephes' expf: exp(x) = 2^n exp(r), r = x - n ln 2 in two parts, exp(r) by a degree-6 polynomial
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp_lines(src: str, dst: str) -> list[str]:
    """Statements (inside a vectorized loop over l) for dst = exp(src), src <= 0 (a softmax's shifted
    logits; TVM's `T.exp` is a scalar libm call per lane); `v` slots 0-2."""
    poly = f32(_EXP_P[0])
    for p in _EXP_P[1:]:
        poly = f"({poly} * v[1, l] + {f32(p)})"
    return [
        f"v[0, l] = T.max({src}, T.float32(-87.0))",
        "v[2, l] = T.floor(v[0, l] * T.float32(1.44269504088896341) + T.float32(0.5))",
        "v[1, l] = v[0, l] - v[2, l] * T.float32(0.693359375) + v[2, l] * T.float32(2.12194440e-4)",
        (f"{dst} = ({poly} * v[1, l] * v[1, l] + v[1, l] + T.float32(1)) * "
         'T.reinterpret("float32", T.shift_left(T.Cast("int32", v[2, l]) + 127, 23))'),
    ]
