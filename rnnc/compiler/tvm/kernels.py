"""Hand-written TIR for one recurrent layer (all of its directions) on CPU, batch and T symbolic.

One PrimFunc per ONNX LSTM/GRU/RNN node, generated as TVMScript text from a `LayerSpec` and parsed
with `tvm.script.from_source`, so that every variant (cell, directions, layouts, tiles) is plain
code one can print and read (`layer_source(spec)`). In the symbols of the ONNX operator page:

    XP[d, t*B + b, :] = X[t, b, :] @ W[d]^T + Wb[d] (+ Rb[d] where it folds)   # one GEMM, all steps
    for t in 0..T-1:                               # a real loop: code size and build time flat in T
        XP[d, tt*B + b] += H[d, b] @ R[d]^T        # all gates of 16 units x a batch tile, in registers
        C, H = cell update (f, g, h)               # fused; Y stored straight in its consumer's layout

The layer runs in one parallel region (`pragma_parallel_launch_point`) with one barrier per step
(`pragma_parallel_barrier_when_finish`, ~0.15 us instead of ~0.8 us for a fresh launch): a step's
work items are (direction, 16-unit column tile, batch tile), so the two directions of a
bidirectional layer run side by side and each core keeps its own panels of R in its own L2.
GRU with ONNX's default linear_before_reset=0 (r applied to H before its product with R) takes two
phases per step, with a barrier between: z, r and RH = r * H for every unit, then the new gate.
Layers whose step is small (batch x D x G x Hp^2 < SERIAL_BELOW, decided per call since batch is
symbolic) run their steps serially: there the barrier costs more than the second core saves.

Weights are packed at build time: gate g of unit j goes to packed column (j // 16 * G + g) * 16 +
j % 16, so a work item reads one contiguous panel of R and of XP. H is padded to a multiple of 16
with zero rows and columns, which keeps the padded units at exactly 0 for every cell. tanh is the
rational approximation of Eigen/TVM's fast_tanh (float32 error ~1e-7; 1.4-2x faster than `T.tanh`
here), sigmoid = 0.5 tanh(x/2) + 0.5.

Two TVM 0.27 facts shape the code: no scalar is let-bound inside a `T.vectorized` loop (every lane
would get the last lane's value), per-lane temporaries live in small buffers instead; and register
accumulators are "global"-scope buffers under 1 KiB, one per row, because LowerTVMBuiltin keeps only
those on the stack (where LLVM promotes them to registers) and turns "local" ones into a workspace
allocation per work item.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LANES = 16
# multiply-adds per step (batch x gates x Hp^2) under which a layer runs serially: a
# parallel step then costs more in its barrier (~0.2-1 us) than the second core saves
SERIAL_BELOW = 1 << 17
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ACTIVATIONS = ("Sigmoid", "Tanh", "Relu")
# Y layouts: the shape of Y and where (tt, d, b, j) lands. "tdbh" is ONNX's own (layout 0).
Y_LAYOUTS = {
    "tdbh": ("(seq, {D}, batch, {H})", "{tt}, d, b, {j}"),
    "tbdh": ("(seq, batch, {DH})", "{tt}, b, d * {H} + {j}"),  # next layer's X, directions merged
    "btdh": ("(batch, seq, {DH})", "b, {tt}, d * {H} + {j}"),  # batch-major, directions merged
    "btd_h": ("(batch, seq, {D}, {H})", "b, {tt}, d, {j}"),  # ONNX layout 1
}
YH_LAYOUTS = {
    "dbh": ("({D}, batch, {H})", "d, b, {j}"),  # ONNX layout 0
    "bdh": ("(batch, {DH})", "b, d * {H} + {j}"),  # h_n batch-major, directions merged
    "bd_h": ("(batch, {D}, {H})", "b, d, {j}"),  # ONNX layout 1
}


@dataclass(frozen=True)
class LayerSpec:
    """Everything that shapes the generated code of one recurrent node."""

    cell: str  # lstm | gru | rnn
    input_size: int
    hidden: int
    directions: tuple[str, ...] = ("forward",)  # each "forward" or "reverse"
    x_layout: str = "tbi"  # tbi (time-major, ONNX layout 0) | bti (batch-major)
    y_layout: str | None = "tdbh"  # None: Y not consumed
    yh_layout: str | None = "dbh"
    yc_layout: str | None = None  # LSTM only
    activations: tuple[str, ...] = ()  # ONNX f, g(, h) per direction; () = the cell's defaults
    clip: float | None = None
    initial_h: bool = False
    initial_c: bool = False
    peepholes: bool = False  # LSTM only: P [D, 3, Hp] (ONNX's P, gate order i, o, f) after C0
    linear_before_reset: bool = True  # GRU: False is ONNX's default, r applied before R (two phases)
    seq_lens: bool = False  # ONNX sequence_lens: an int32 [batch] input after P
    batch_tile: int = 4  # rows of a recurrent register tile (a partial last tile has its own variant)
    gemm_rows: int = 4  # rows of the input GEMM's register tile
    serial_below: int = -1  # multiply-adds per step under which steps run serially; -1: SERIAL_BELOW

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def hp(self) -> int:
        return -(-self.hidden // LANES) * LANES

    @property
    def acts(self) -> tuple[str, ...]:
        if self.activations:
            return self.activations
        return {"lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh"), "rnn": ("Tanh",)}[self.cell] * len(
            self.directions
        )

    def gemm_panel(self) -> int:
        """Column blocks (16 wide) per GEMM register tile: the largest of 4..1 dividing G*Hp/16."""
        blocks = self.gates * self.hp // LANES
        return next(n for n in (4, 3, 2, 1) if blocks % n == 0)


# ---------------------------------------------------------------------------------------------
# weight packing (numpy, at build time)


def pack_weights(spec: LayerSpec, w: np.ndarray, r: np.ndarray, b: np.ndarray | None) -> dict[str, np.ndarray]:
    """ONNX W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H] -> the kernel's packed float32 arrays.

    `w` -> [D, G*Hp/16, I, 16] (GEMM panels), `r` -> [D, Hp/16, Hp, G, 16] (one panel per column
    tile), `bias` -> [D, G*Hp] folded (Wb + Rb, except GRU's recurrent bias of the new gate, which
    is applied inside r * (...) and goes to `rbn` [D, Hp]).
    """
    d_, g_, h_, hp = len(spec.directions), spec.gates, spec.hidden, spec.hp
    if b is None:
        b = np.zeros((d_, 2 * g_ * h_))
    perm = _packed_columns(spec)  # packed column -> original row (or -1 for padding)

    def columns(m: np.ndarray) -> np.ndarray:  # [G*H, K] -> [G*Hp, K] in packed order
        out = np.zeros((g_ * hp, m.shape[1]))
        out[perm >= 0] = m[perm[perm >= 0]]
        return out

    wp, rp, bias, rbn = [], [], [], []
    for d in range(d_):
        wc = columns(w[d].astype(np.float64))  # [G*Hp, I]
        wp.append(wc.reshape(g_ * hp // LANES, LANES, spec.input_size).transpose(0, 2, 1))
        rc = columns(np.pad(r[d].astype(np.float64), ((0, 0), (0, hp - h_))))  # [G*Hp, Hp]
        rp.append(rc.reshape(hp // LANES, g_, LANES, hp).transpose(0, 3, 1, 2))
        wb, rb = b[d, : g_ * h_].astype(np.float64), b[d, g_ * h_ :].astype(np.float64)
        folded = wb + rb
        n_rb = np.zeros(hp)
        if spec.cell == "gru" and spec.linear_before_reset:  # the new gate's Rb stays in r * (R h + Rb)
            folded[2 * h_ :] = wb[2 * h_ :]
            n_rb[:h_] = rb[2 * h_ :]
        bias.append(columns(folded[:, None])[:, 0])
        rbn.append(n_rb)
    arrays = {"w": np.stack(wp), "r": np.stack(rp), "bias": np.stack(bias)}
    if spec.cell == "gru" and spec.linear_before_reset:
        arrays["rbn"] = np.stack(rbn)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def pack_peepholes(spec: LayerSpec, p: np.ndarray) -> np.ndarray:
    """ONNX P [D, 3*H] -> [D, 3, Hp], zero-padded."""
    d_, h_ = len(spec.directions), spec.hidden
    out = np.zeros((d_, 3, spec.hp), np.float32)
    out[:, :, :h_] = np.asarray(p, np.float64).reshape(d_, 3, h_)
    return out


def _packed_columns(spec: LayerSpec) -> np.ndarray:
    g_, h_, hp = spec.gates, spec.hidden, spec.hp
    perm = np.full(g_ * hp, -1)
    for jo in range(hp // LANES):
        for g in range(g_):
            for ji in range(LANES):
                j = jo * LANES + ji
                if j < h_:
                    perm[(jo * g_ + g) * LANES + ji] = g * h_ + j
    return perm


# ---------------------------------------------------------------------------------------------
# TVMScript generation


def layer_primfunc(spec: LayerSpec, name: str = "main"):
    """The parsed PrimFunc of one layer."""
    import tvm.script

    return tvm.script.from_source(layer_source(spec, name))


def layer_source(spec: LayerSpec, name: str = "main") -> str:
    """TVMScript of one layer. Parameters: X, W, R, bias, [rbn], [H0], [C0], then Y, Y_h, Y_c outputs
    (only those whose layout is set)."""
    _check(spec)
    g_, hp, h_, i_ = spec.gates, spec.hp, spec.hidden, spec.input_size
    d_ = len(spec.directions)
    fmt = dict(D=d_, H=h_, DH=d_ * h_, Hp=hp, I=i_, G=g_, N=g_ * hp, NJT=hp // LANES, NCB=g_ * hp // LANES)

    params: list[tuple[str, str]] = []
    xshape = "(seq, batch, {I})" if spec.x_layout == "tbi" else "(batch, seq, {I})"
    params.append(("X", xshape))
    params.append(("W", "({D}, {NCB}, {I}, 16)"))
    params.append(("R", "({D}, {NJT}, {Hp}, {G}, 16)"))
    params.append(("Bias", "({D}, {N})"))
    if spec.cell == "gru" and spec.linear_before_reset:
        params.append(("Rbn", "({D}, {Hp})"))
    if spec.initial_h:
        params.append(("H0", "({D}, batch, {H})"))
    if spec.initial_c:
        params.append(("C0", "({D}, batch, {H})"))
    if spec.peepholes:
        params.append(("P", "({D}, 3, {Hp})"))
    if spec.seq_lens:
        params.append(("Lens", "(batch,)"))
    outs = []
    if spec.y_layout:
        outs.append(("Y", Y_LAYOUTS[spec.y_layout][0]))
    if spec.yh_layout:
        outs.append(("Yh", YH_LAYOUTS[spec.yh_layout][0]))
    if spec.yc_layout:
        outs.append(("Yc", YH_LAYOUTS[spec.yc_layout][0]))

    L: list[str] = []
    emit = L.append
    args = ", ".join(f"{p.lower()}_h: T.handle" for p, _ in params + outs)
    emit("@T.prim_func")
    emit(f"def {name}({args}):")
    emit('    T.func_attr({"tir.noalias": True})')
    emit("    batch = T.int64()")
    emit("    seq = T.int64()")
    for p, shape in params + outs:
        dtype = "int32" if p == "Lens" else "float32"
        emit(f'    {p} = T.match_buffer({p.lower()}_h, {shape.format(**fmt)}, "{dtype}")')
    emit(f'    XP = T.alloc_buffer(({d_}, seq * batch, {g_ * hp}), "float32")')
    emit(f'    Hs = T.alloc_buffer((2, {d_}, batch, {hp}), "float32")')
    if spec.cell == "lstm":
        emit(f'    Cs = T.alloc_buffer(({d_}, batch, {hp}), "float32")')
    if _two_phase(spec):
        emit(f'    RH = T.alloc_buffer(({d_}, batch, {hp}), "float32")')
    macs = g_ * hp * hp  # per batch row and step (the directions run one after the other)
    below = SERIAL_BELOW if spec.serial_below < 0 else spec.serial_below
    if macs >= below:
        L.extend(_indent(_body(spec, True), 4))
    else:  # small steps: a barrier per step costs more than a second core gains, below a size
        emit(f"    if batch * {macs} >= {below}:")
        L.extend(_indent(_body(spec, True), 8))
        emit("    else:")
        L.extend(_indent(_body(spec, False), 8))
    return "\n".join(L) + "\n"


def _indent(lines: list[str], n: int) -> list[str]:
    return [" " * n + line for line in lines]


def _body(spec: LayerSpec, parallel: bool) -> list[str]:
    """GEMM, initial state, time loop, final state; in one parallel region or all serial."""
    g_, hp, h_ = spec.gates, spec.hp, spec.hidden
    d_ = len(spec.directions)
    # serial steps are small ones (see SERIAL_BELOW): one row at a time, less code to build
    njt, bt, mr, nr = hp // LANES, spec.batch_tile if parallel else 1, spec.gemm_rows, spec.gemm_panel()
    ncb = g_ * hp // LANES
    fmt = dict(D=d_, H=h_, DH=d_ * h_)
    loop = "T.parallel" if parallel else "T.serial"
    L: list[str] = []
    emit = L.append
    if parallel:
        emit('for _region in T.serial(1, annotations={"pragma_parallel_launch_point": 1}):')
        ind = "    "
        emit(ind + 'for _gemm in T.serial(1, annotations={"pragma_parallel_barrier_when_finish": 1}):')
        L.extend(_gemm(spec, ind + "    ", mr, nr, ncb))
        emit(ind + 'for _init in T.serial(1, annotations={"pragma_parallel_barrier_when_finish": 1}):')
        i2 = ind + "    "
    else:  # the GEMM still has rows to share: its own parallel loop, one launch
        ind = ""
        L.extend(_gemm(spec, ind, mr, nr, ncb))
        i2 = ind
    emit(i2 + f"for w in {loop}({d_} * batch):")
    emit(i2 + "    d: T.let[T.int64] = w // batch")
    emit(i2 + "    b: T.let[T.int64] = w % batch")
    emit(i2 + f"    for j in T.serial({hp}):")
    init_h = f"T.if_then_else(j < {h_}, H0[d, b, T.min(j, {h_ - 1})], T.float32(0))" if spec.initial_h else "T.float32(0)"
    emit(i2 + f"        Hs[0, d, b, j] = {init_h}")
    if spec.cell == "lstm":
        init_c = f"T.if_then_else(j < {h_}, C0[d, b, T.min(j, {h_ - 1})], T.float32(0))" if spec.initial_c else "T.float32(0)"
        emit(i2 + f"        Cs[d, b, j] = {init_c}")
    # --- the time loop, one direction after the other: each direction's R stays in the L2 of
    # the core(s) working on it for all T steps, instead of both sharing it every step
    emit(ind + f"for d in T.serial({d_}):")
    ind = ind + "    "
    emit(ind + "for t in T.serial(seq):")
    i2 = ind + "    "
    if parallel:
        emit(i2 + 'for _step in T.serial(1, annotations={"pragma_parallel_barrier_when_finish": 1}):')
        i3 = i2 + "    "
    else:
        i3 = i2
    if not _two_phase(spec):
        L.extend(_step_items(spec, i3, loop, bt, "full"))
    else:  # GRU with r before R: z, r and r*H for every unit, a barrier, then the new gate
        if not parallel:  # each phase in its own scope, as the parallel ones are
            emit(i2 + "for _step in T.serial(1):")
            i3 = i2 + "    "
        L.extend(_step_items(spec, i3, loop, bt, "zr"))
        barrier = ', annotations={"pragma_parallel_barrier_when_finish": 1}' if parallel else ""
        emit(i2 + f"for _step2 in T.serial(1{barrier}):")
        L.extend(_step_items(spec, i3, loop, bt, "n"))
    # --- final states
    ind = ind[:-4]
    if spec.yh_layout or spec.yc_layout:
        emit(ind + f"for w in {loop}({d_} * batch):")
        emit(ind + "    d: T.let[T.int64] = w // batch")
        emit(ind + "    b: T.let[T.int64] = w % batch")
        emit(ind + f"    for j in T.serial({h_}):")
        if spec.yh_layout:
            emit(ind + f"        Yh[{YH_LAYOUTS[spec.yh_layout][1].format(j='j', **fmt)}] = Hs[seq % 2, d, b, j]")
        if spec.yc_layout:
            emit(ind + f"        Yc[{YH_LAYOUTS[spec.yc_layout][1].format(j='j', **fmt)}] = Cs[d, b, j]")
    return L


def _two_phase(spec: LayerSpec) -> bool:
    return spec.cell == "gru" and not spec.linear_before_reset


def _step_items(spec: LayerSpec, i3: str, loop: str, bt: int, phase: str) -> list[str]:
    """One step's work items of direction d: (column tile, batch tile), product then update."""
    njt = spec.hp // LANES
    L: list[str] = []
    emit = L.append
    emit(i3 + f"nbt: T.let[T.int64] = batch // {bt}")
    emit(i3 + f"nrows: T.let[T.int64] = (batch + {bt - 1}) // {bt}")
    emit(i3 + f"for w in {loop}({njt} * nrows):")
    i4 = i3 + "    "
    emit(i4 + "jo: T.let[T.int64] = w // nrows")
    emit(i4 + "bi: T.let[T.int64] = w % nrows")
    emit(i4 + _time_index(spec))
    emit(i4 + "cur: T.let[T.int64] = t % 2")
    emit(i4 + f"b0: T.let[T.int64] = bi * {bt}")
    if spec.cell == "gru" and phase == "full":
        emit(i4 + f'rn = T.alloc_buffer(({bt}, 16), "float32")')
    # the recurrent products: a full tile, or the last, partial one with one variant per
    # remainder so that its rows also share one pass over R; they add into XP in place
    emit(i4 + "if bi < nbt:")
    L.extend(_recurrent_product(spec, i4 + "    ", bt, phase))
    ind5 = i4
    for rem in range(1, bt):
        emit(ind5 + "else:")
        if rem < bt - 1:
            emit(ind5 + f"    if batch % {bt} == {rem}:")
            L.extend(_recurrent_product(spec, ind5 + "        ", rem, phase))
            ind5 += "    "
        else:
            L.extend(_recurrent_product(spec, ind5 + "    ", rem, phase))
    # the gates and state update, once for whichever tile (keeps code size and build time down)
    emit(i4 + f"for i in T.serial(T.min({bt}, batch - b0)):")
    L.extend(_row_update(spec, i4 + "    ", phase))
    return L


def _check(spec: LayerSpec) -> None:
    assert spec.cell in GATES, spec.cell
    assert all(d in ("forward", "reverse") for d in spec.directions) and 1 <= len(spec.directions) <= 2
    assert spec.x_layout in ("tbi", "bti")
    assert spec.y_layout is None or spec.y_layout in Y_LAYOUTS
    assert spec.yh_layout is None or spec.yh_layout in YH_LAYOUTS
    assert spec.yc_layout is None or (spec.cell == "lstm" and spec.yc_layout in YH_LAYOUTS)
    assert not (spec.peepholes or spec.initial_c) or spec.cell == "lstm"
    assert all(a in ACTIVATIONS for a in spec.acts)
    assert spec.batch_tile >= 1 and spec.gemm_rows >= 1


def _time_index(spec: LayerSpec) -> str:
    """tt: the step a direction handles at iteration t (reverse runs T-1 .. 0)."""
    dirs = spec.directions
    if dirs == ("forward",):
        return "tt: T.let[T.int64] = t"
    if dirs == ("reverse",):
        return "tt: T.let[T.int64] = seq - 1 - t"
    if dirs == ("forward", "reverse"):
        return "tt: T.let[T.int64] = t + d * (seq - 1 - 2 * t)"
    return "tt: T.let[T.int64] = seq - 1 - t + d * (2 * t + 1 - seq)"  # (reverse, forward)


def _gemm(spec: LayerSpec, ind: str, mr: int, nr: int, ncb: int) -> list[str]:
    """XP[d, m, :] = X(m) @ W[d] + Bias[d] for m = t*batch + b, register tile mr rows x nr*16 columns.

    One accumulator buffer per row: LowerTVMBuiltin keeps only "global" allocations under 1 KiB on
    the stack (where LLVM promotes them to registers); anything else becomes a workspace call.
    """
    d_, i_ = len(spec.directions), spec.input_size
    npn = ncb // nr
    xrow = "X[{m} // batch, {m} % batch, k]" if spec.x_layout == "tbi" else "X[{m} % batch, {m} // batch, k]"
    L = [
        ind + "rows: T.let[T.int64] = seq * batch",
        ind + f"nmt: T.let[T.int64] = rows // {mr}",
        ind + f"nm: T.let[T.int64] = nmt + rows % {mr}",
        ind + f"for w in T.parallel({d_} * nm * {npn}):",
        # row tiles fastest: a thread's consecutive items share one panel of W, which stays in its
        # L2 while X streams past, so W (MiBs at H >= 512) comes from memory once, not once per row tile
        ind + f"    d: T.let[T.int64] = w // (nm * {npn})",
        ind + f"    pn: T.let[T.int64] = w % (nm * {npn}) // nm",
        ind + "    mi: T.let[T.int64] = w % nm",
        ind + "    if mi < nmt:",
    ]
    for rows, m0 in ((mr, f"mi * {mr}"), (1, f"nmt * {mr} + (mi - nmt)")):
        i5 = ind + "        "
        L.append(i5 + f"m0: T.let[T.int64] = {m0}")
        for i in range(rows):
            L.append(i5 + f'acc{i} = T.alloc_buffer(({nr}, 16), "float32")')
            L.append(i5 + f"for c, l in T.grid({nr}, 16):")
            L.append(i5 + f"    acc{i}[c, l] = T.float32(0)")
        L.append(i5 + f"for k in T.serial({i_}):")
        for i in range(rows):
            L.append(i5 + f"    for c in T.unroll({nr}):")
            L.append(i5 + "        for l in T.vectorized(16):")
            L.append(i5 + f"            acc{i}[c, l] = acc{i}[c, l] + {xrow.format(m=f'(m0 + {i})')} * W[d, pn * {nr} + c, k, l]")
        for i in range(rows):
            L.append(i5 + f"for c in T.unroll({nr}):")
            L.append(i5 + "    for l in T.vectorized(16):")
            L.append(i5 + f"        XP[d, m0 + {i}, (pn * {nr} + c) * 16 + l] = acc{i}[c, l] + Bias[d, (pn * {nr} + c) * 16 + l]")
        if rows == mr:
            L.append(ind + "    else:")
    return L


_TANH_A = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_B = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def _f(x: float) -> str:
    return f"T.float32({x!r})"


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
    num = _f(_TANH_A[-1])
    for a in reversed(_TANH_A[:-1]):
        num = f"({num} * {x2} + {_f(a)})"
    den = _f(_TANH_B[-1])
    for b in reversed(_TANH_B[:-1]):
        den = f"({den} * {x2} + {_f(b)})"
    out.append(f"{p} = {num} * {x} / {den}")
    if name == "Sigmoid":
        out.append(f"{dst} = T.float32(0.5) * {p} + T.float32(0.5)")
    else:
        out.append(f"{dst} = {p}")
    return out


def _recurrent_product(spec: LayerSpec, ind: str, rows: int, phase: str = "full") -> list[str]:
    """XP[d, tt, b0 + i, tile jo] += H[b0 + i] @ R[d, :, tile jo] for `rows` rows, in registers.

    phase "full": every gate (GRU: the new gate's part to `rn`, apart); "zr": GRU's z and r only;
    "n": GRU's new gate, from RH = r * H instead of H."""
    g_, hp = spec.gates, spec.hp
    gates = {"full": list(range(g_)), "zr": [0, 1], "n": [2]}[phase]
    src = "RH[d, b0 + {i}, k]" if phase == "n" else "Hs[cur, d, b0 + {i}, k]"
    ng, g0 = len(gates), gates[0]
    L = []
    for i in range(rows):
        L += [
            ind + f'acc{i} = T.alloc_buffer(({ng}, 16), "float32")',
            ind + f"for g, l in T.grid({ng}, 16):",
            ind + f"    acc{i}[g, l] = T.float32(0)",
        ]
    L.append(ind + f"for k in T.serial({hp}):")
    for i in range(rows):
        L += [
            ind + f"    for g in T.unroll({ng}):",
            ind + "        for l in T.vectorized(16):",
            ind + f"            acc{i}[g, l] = acc{i}[g, l] + {src.format(i=i)} * R[d, jo, k, g + {g0}, l]",
        ]
    for i in range(rows):
        tt = "tt"
        if spec.seq_lens:  # each row has its own step under sequence_lens (reverse starts at len - 1)
            L.append(ind + f"tr{i}: T.let[T.int64] = {_row_time(spec, f'b0 + {i}')}")
            tt = f"tr{i}"
        xp = f"XP[d, {tt} * batch + b0 + {i}, (jo * {g_} + g + {g0}) * 16 + l]"
        if spec.cell == "gru" and phase == "full":  # the new gate's recurrent part stays apart: r * (R h + Rb)
            L += [ind + "for g in T.unroll(2):", ind + "    for l in T.vectorized(16):",
                  ind + f"        {xp} = {xp} + acc{i}[g, l]",
                  ind + "for l in T.vectorized(16):", ind + f"    rn[{i}, l] = acc{i}[2, l]"]
        else:
            L += [ind + f"for g in T.unroll({ng}):", ind + "    for l in T.vectorized(16):",
                  ind + f"        {xp} = {xp} + acc{i}[g, l]"]
    return L


def _row_update(spec: LayerSpec, ind: str, phase: str = "full") -> list[str]:
    """Row b0 + i of the tile: gates, state, Y."""
    L = [ind + "br: T.let[T.int64] = b0 + i"]
    tt = "tt"
    if spec.seq_lens:
        L.append(ind + f"ttr: T.let[T.int64] = {_row_time(spec, 'br')}")
        L.append(ind + "if t < T.Cast(\"int64\", Lens[br]):")
        ind, tt = ind + "    ", "ttr"
    L += [ind + 'v = T.alloc_buffer((8, 16), "float32")', ind + "for l in T.vectorized(16):"]
    L += [ind + "    " + line for line in _update(spec, "br", phase, tt)]
    if spec.y_layout and phase != "zr":
        L += _store_y(spec, ind, tt, "Hs[1 - cur, d, br, jo * 16 + l]")
    if spec.seq_lens and phase != "zr":  # past its length a row keeps its state, and Y is 0
        ind = ind[:-4]
        L.append(ind + "else:")
        L += [ind + "    for l in T.vectorized(16):",
              ind + "        Hs[1 - cur, d, br, jo * 16 + l] = Hs[cur, d, br, jo * 16 + l]"]
        if spec.y_layout:
            L += _store_y(spec, ind + "    ", tt, "T.float32(0)")
    return L


def _store_y(spec: LayerSpec, ind: str, tt: str, value: str) -> list[str]:
    h_ = spec.hidden
    fmt = dict(D=len(spec.directions), H=h_, DH=len(spec.directions) * h_)
    if spec.hp == h_:
        yidx = Y_LAYOUTS[spec.y_layout][1].format(tt=tt, j="jo * 16 + l", **fmt).replace("b,", "br,")
        return [ind + "for l in T.vectorized(16):", ind + f"    Y[{yidx}] = {value}"]
    # padded units are not written; a scalar loop keeps the guard out of the vector code
    j = f"T.min(jo * 16 + l, {h_ - 1})"
    yidx = Y_LAYOUTS[spec.y_layout][1].format(tt=tt, j=j, **fmt).replace("b,", "br,")
    return [ind + "for l in T.serial(16):", ind + f"    if jo * 16 + l < {h_}:", ind + f"        Y[{yidx}] = {value}"]


def _row_time(spec: LayerSpec, b: str) -> str:
    """Under sequence_lens: the step row b handles at iteration t; past its length, t itself."""
    n = f'T.Cast("int64", Lens[{b}])'
    back = f"T.if_then_else(t < {n}, {n} - 1 - t, t)"
    rev = [i for i, x in enumerate(spec.directions) if x == "reverse"]
    if not rev:
        return "t"
    if len(spec.directions) == 1:
        return back
    return f"T.if_then_else(d == {rev[0]}, {back}, t)"


def _update(spec: LayerSpec, b: str, phase: str = "full", tt: str = "tt") -> list[str]:
    """The fused gates and state update of row b, lane l, into Hs[1 - cur] and v[7, l]."""
    g_ = spec.gates
    pre = [f"XP[d, {tt} * batch + {b}, (jo * {g_} + {g}) * 16 + l]" for g in range(g_)]
    acts = spec.acts

    def act(k: int, dst: str, src: str) -> list[str]:
        return _act(acts[k], dst, src, "v[{s}, l]")  # the lowering checks both directions agree

    def clip(expr: str) -> str:
        if spec.clip is None:
            return expr
        return f"T.max(T.min({expr}, {_f(spec.clip)}), {_f(-spec.clip)})"

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
    return body
