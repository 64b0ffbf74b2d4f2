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
with zero rows and columns, which keeps the padded units at exactly 0 for every cell. The gate
arithmetic of one row is in `cell`.

Two TVM 0.27 facts shape the code: no scalar is let-bound inside a `T.vectorized` loop (every lane
would get the last lane's value), per-lane temporaries live in small buffers instead; and register
accumulators are "global"-scope buffers under 1 KiB, one per row (see `gemm`).
"""
from __future__ import annotations

from collections.abc import Iterator
import dataclasses
from contextlib import contextmanager

import numpy as np

from rnnc.compiler.tvm import amx, cell, quant
from rnnc.compiler.tvm.emit import Emitter, prim_func
from rnnc.compiler.tvm.gemm import accumulate, gemm
from rnnc.compiler.tvm.spec import (ACTIVATIONS, LANES, SERIAL_BELOW, LayerSpec, check, item_order, signature,
                                    state_index, time_index)

__all__ = ["ACTIVATIONS", "LANES", "LayerSpec", "layer_primfunc", "layer_source", "pack"]

_REGION = 'for _region in T.serial(1, annotations={"pragma_parallel_launch_point": 1}):'


def _barrier(name: str) -> str:
    return f'for {name} in T.serial(1, annotations={{"pragma_parallel_barrier_when_finish": 1}}):'


# ---------------------------------------------------------------------------------------------
# weight packing (numpy, at build time)


def pack(spec: LayerSpec, w: np.ndarray, r: np.ndarray, b: np.ndarray | None,
         p: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """ONNX W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H] (, P [D, 3*H]) -> the kernel's constants, by
    parameter name (`spec.signature`): float32, with W and R at `spec.precision` (`quant.pack`).

    W -> [D, G*Hp/16, I, 16] (GEMM panels), R -> [D, Hp/16, Hp, G, 16] (one panel per column tile),
    Bias -> [D, G*Hp] folded (Wb + Rb, except GRU's recurrent bias of the new gate, which is applied
    inside r * (...) and goes to Rbn [D, Hp]), P -> [D, 3, Hp], zero-padded.
    """
    spec = amx.resolve(spec)
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
    arrays = {"W": np.stack(wp), "R": np.stack(rp), "Bias": np.stack(bias)}
    if spec.cell == "gru" and spec.linear_before_reset:
        arrays["Rbn"] = np.stack(rbn)
    if p is not None:
        arrays["P"] = np.zeros((d_, 3, hp))
        arrays["P"][:, :, :h_] = np.asarray(p, np.float64).reshape(d_, 3, h_)
    packed = quant.pack(spec, arrays)
    if spec.precision == "bf16" and spec.amx_from:  # AMX's own layout beside the widened kernel's
        packed.update(amx.pack(spec, arrays))
    return packed


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
    """TVMScript of one layer; its parameters are `signature(spec, "llvm")`. A layer with an AMX
    body (`amx`) runs it from `spec.amx_from` rows of batch on, this kernel's body below."""
    spec = amx.resolve(spec)
    check(spec)
    g_, hp, d_ = spec.gates, spec.hp, len(spec.directions)
    e = Emitter()
    with prim_func(e, name, signature(spec, "llvm"), ("batch", "seq")):
        bf16_amx = spec.amx_from and spec.precision == "bf16"
        spare = " + 32" if bf16_amx else ""  # the bf16 AMX projection's tiles of 32 rows
        e.line(f'XP = T.alloc_buffer(({d_}, seq * batch{spare}, {g_ * hp}), "float32")')
        e.line(f'Hs = T.alloc_buffer((2, {d_}, batch, {hp}), "float32")')
        if spec.cell == "lstm":
            e.line(f'Cs = T.alloc_buffer(({d_}, batch, {hp}), "float32")')
        if cell.two_phase(spec):
            e.line(f'RH = T.alloc_buffer(({d_}, batch, {hp}), "float32")')
        if spec.vnni_int8:  # uint8 activations and their row scales (`quant`); AMX tiles read 16 rows of X
            rows = "seq * batch + 16" if spec.amx_from else "seq * batch"
            e.line(f'Xq = T.alloc_buffer(({rows}, {spec.ip}), "uint8")')
            e.line(f'Xr = T.alloc_buffer(({rows}, {spec.ip}), "uint8")  # X\'s second byte')
            e.line('Xsc = T.alloc_buffer((seq * batch,), "float32")')
            e.line(f'Hq = T.alloc_buffer(({"2, " if spec.fixed_h else ""}{d_}, batch, {spec.kq}), "uint8")')
            e.line(f'Hsc = T.alloc_buffer(({d_}, batch), "float32")')
        if bf16_amx:  # bf16 operands of the AMX products: X rows, and H per step (double-buffered)
            e.line(f'Xb = T.alloc_buffer((seq * batch + 32, {spec.ip2}), "uint16")')
            e.line(f'Hb = T.alloc_buffer((2, {d_}, batch, {spec.kp}), "uint16")')
        if spec.amx_from:
            if spec.amx_from == 1 or amx.projection_always(spec):  # (no else branch at 1: batch 0, TVM divides by it)
                _amx_body(e, spec)
            else:
                with e.block(f"if batch >= {spec.amx_from}:"):
                    _amx_body(e, spec)
                widened = dataclasses.replace(spec, amx_from=0)  # the kernel without AMX, below amx_from
                with e.block("else:"):
                    _bodies(e, widened)
        else:
            _bodies(e, spec)
    return e.text()


def _bodies(e: Emitter, spec: LayerSpec) -> None:
    """The parallel body, or where steps can be small, it and the serial one, chosen per call."""
    macs = spec.gates * spec.hp * spec.hp  # per batch row and step (the directions run one after the other)
    below = SERIAL_BELOW if spec.serial_below < 0 else spec.serial_below
    if macs >= below:
        _body(e, spec, True)
    else:  # small steps: a barrier per step costs more than a second core gains, below a size
        with e.block(f"if batch * {macs} >= {below}:"):
            _body(e, spec, True)
        with e.block("else:"):
            _body(e, spec, False)


def _amx_body(e: Emitter, spec: LayerSpec) -> None:
    """`_body` on AMX tiles (`amx`): X to bf16 (int8: to two uint8), the projection, the initial
    state (H also to bf16, zeros past Hp; int8: Hq's pad past Hp at the zero point), the steps
    (int8: H to uint8 in a phase before each), the final state; always parallel (its steps are
    large ones)."""
    int8 = spec.precision == "int8"
    with e.block(_REGION):
        with e.block(_barrier("_xround")):
            if int8:
                _quantize_x(e, spec)
            else:
                amx.round_x(e, spec, _xrow(spec))
        with e.block(_barrier("_gemm")):
            (amx.projection_int8 if int8 else amx.projection)(e, spec)
        with e.block(_barrier("_init")), _per_row(e, spec, "T.parallel"):
            with e.block(f"for j in T.serial({spec.kq if int8 else spec.kp}):"):
                e.line(f"h0: T.let[T.float32] = {_initial('H0', spec.initial_h, spec.hidden)}")
                with e.block(f"if j < {spec.hp}:"):
                    e.line("Hs[0, d, b, j] = h0")
                    if spec.cell == "lstm":
                        e.line(f"Cs[d, b, j] = {_initial('C0', spec.initial_c, spec.hidden)}")
                if not int8:
                    e.line(f"Hb[0, d, b, j] = {amx.bf16('h0')}")
                    e.line("Hb[1, d, b, j] = T.uint16(0)")
            if int8:
                _init_hq(e, spec)
        with e.block(f"for d in T.serial({len(spec.directions)}):"), e.block("for t in T.serial(seq):"):
            if int8:
                _hquant_phase(e, spec, True)
            if not int8:
                with e.block(_barrier("_step")):
                    amx.step_items(e, spec, "T.parallel")
            elif spec.amx_from == 1:
                with e.block(_barrier("_step")):
                    amx.step_items_int8(e, spec, "T.parallel")
            else:  # int8 below amx_from: VNNI's steps after AMX's projection (see `amx.projection_always`)
                with e.block(_barrier("_step")):
                    with e.block(f"if batch >= {spec.amx_from}:"):
                        amx.step_items_int8(e, spec, "T.parallel")
                    with e.block("else:"):
                        _step_items(e, spec, "T.parallel", spec.batch_tile, "full")
        _final(e, spec, "T.parallel")


def _body(e: Emitter, spec: LayerSpec, parallel: bool) -> None:
    """GEMM, initial state, time loop, final state; in one parallel region or all serial."""
    # serial steps are small ones (see SERIAL_BELOW): one row at a time, less code to build
    bt = spec.batch_tile if parallel else 1
    loop = "T.parallel" if parallel else "T.serial"
    with e.block(_REGION if parallel else None):
        # serial: the GEMM still has rows to share, in its own parallel loop (one launch)
        if spec.vnni_int8:
            with e.block(_barrier("_xquant") if parallel else None):
                _quantize_x(e, spec)
        with e.block(_barrier("_gemm") if parallel else None):
            _projection(e, spec)
        with e.block(_barrier("_init") if parallel else None), _per_row(e, spec, loop):
            with e.block(f"for j in T.serial({spec.hp}):"):
                e.line(f"Hs[0, d, b, j] = {_initial('H0', spec.initial_h, spec.hidden)}")
                if spec.cell == "lstm":
                    e.line(f"Cs[d, b, j] = {_initial('C0', spec.initial_c, spec.hidden)}")
            if spec.vnni_int8:
                _init_hq(e, spec)
        # the time loop, one direction after the other: each direction's R stays in the L2 of the
        # core(s) working on it for all T steps, instead of both sharing it every step
        with e.block(f"for d in T.serial({len(spec.directions)}):"), e.block("for t in T.serial(seq):"):
            if spec.vnni_int8:  # H of every row to uint8, before any product reads it
                _hquant_phase(e, spec, parallel)
            if not cell.two_phase(spec):
                with e.block(_barrier("_step") if parallel else None):
                    _step_items(e, spec, loop, bt, "full")
            else:  # GRU with r before R: z, r and r*H for every unit, a barrier, then the new gate
                with e.block(_barrier("_step") if parallel else "for _step in T.serial(1):"):
                    _step_items(e, spec, loop, bt, "zr")
                if spec.vnni_int8:
                    with e.block(_barrier("_rquant") if parallel else "for _rquant in T.serial(1):"):
                        _quantize_h(e, spec, loop, "RH[d, b, {k}]")
                with e.block(_barrier("_step2") if parallel else "for _step2 in T.serial(1):"):
                    _step_items(e, spec, loop, bt, "n")
        _final(e, spec, loop)


def _final(e: Emitter, spec: LayerSpec, loop: str) -> None:
    """Y_h and Y_c from the state after the last step."""
    if spec.yh_layout or spec.yc_layout:
        with _per_row(e, spec, loop), e.block(f"for j in T.serial({spec.hidden}):"):
            if spec.yh_layout:
                e.line(f"Yh[{state_index(spec.yh_layout, spec, 'b', 'j')}] = Hs[seq % 2, d, b, j]")
            if spec.yc_layout:
                e.line(f"Yc[{state_index(spec.yc_layout, spec, 'b', 'j')}] = Cs[d, b, j]")


@contextmanager
def _per_row(e: Emitter, spec: LayerSpec, loop: str) -> Iterator[None]:
    """A work item per (direction d, batch row b)."""
    with e.block(f"for w in {loop}({len(spec.directions)} * batch):"):
        e.line("d: T.let[T.int64] = w // batch")
        e.line("b: T.let[T.int64] = w % batch")
        yield


def _initial(buffer: str, given: bool, h_: int) -> str:
    if not given:
        return "T.float32(0)"
    return f"T.if_then_else(j < {h_}, {buffer}[d, b, T.min(j, {h_ - 1})], T.float32(0))"


def _xrow(spec: LayerSpec) -> str:
    return "X[{m} // batch, {m} % batch, {k}]" if spec.x_layout == "tbi" else "X[{m} % batch, {m} // batch, {k}]"


def _quantize_x(e: Emitter, spec: LayerSpec) -> None:
    """Xq, Xr[m] = X row m in two uint8 (`quant`) with its own scale Xsc[m] (VNNI's input projection;
    shared by the directions)."""
    with e.block("for m in T.parallel(seq * batch):"):
        quant.quantize_row(e, lambda k: _xrow(spec).format(m="m", k=k), spec.input_size, spec.ip,
                           lambda k: f"Xq[m, {k}]", "Xsc[m]", residual=lambda k: f"Xr[m, {k}]")


def _quantize_h(e: Emitter, spec: LayerSpec, loop: str, src: str) -> None:
    """Hq[d, b] = `src` (H or GRU's r * H) of row b in uint8, its scale Hsc[d, b] (K's pad to kq at
    the zero point)."""
    with e.block(f"for b in {loop}(batch):"):
        quant.quantize_row(e, lambda k: src.format(k=k), spec.hp, spec.kq, lambda k: quant.hq(spec, "b", k, "0"),
                           "Hsc[d, b]")  # (under a fixed scale, only step 0's H0: buffer 0)


def _hquant_phase(e: Emitter, spec: LayerSpec, parallel: bool) -> None:
    """H of every row to uint8 before the step's products: a phase per step, or under a fixed
    scale (`LayerSpec.fixed_h`) only step 0's for an initial H0 (the cell updates write the rest)."""
    if spec.fixed_h and not spec.initial_h:
        return
    loop = "T.parallel" if parallel else "T.serial"
    with e.block("if t == 0:" if spec.fixed_h else None):
        with e.block(_barrier("_hquant") if parallel else "for _hquant in T.serial(1):"):
            _quantize_h(e, spec, loop, "Hs[t % 2, d, b, {k}]")


def _init_hq(e: Emitter, spec: LayerSpec) -> None:
    """Row b's Hq at the zero point up to kq (its pad past Hp stays so; under a fixed scale both
    buffers, and buffer 0 is the zero state's H)."""
    with e.block(f"for j in T.serial({spec.kq}):"):
        if spec.fixed_h:
            e.line(f"{quant.hq(spec, 'b', 'j', '0')} = T.uint8({quant.ZERO_POINT})")
            e.line(f"{quant.hq(spec, 'b', 'j', '1')} = T.uint8({quant.ZERO_POINT})")
        else:
            e.line(f"{quant.hq(spec, 'b', 'j')} = T.uint8({quant.ZERO_POINT})")


def _projection(e: Emitter, spec: LayerSpec) -> None:
    """XP[d, m, :] = X(m) @ W[d] + Bias[d] for every m = t*batch + b, all steps in one GEMM."""
    # VNNI's tile has two accumulators per row and block (X's two bytes): half the panel keeps them in registers
    nr = spec.gemm_panel()
    if spec.vnni_int8:
        nr = 2 if nr % 2 == 0 else 1
    xrow = _xrow(spec)
    ws = quant.scale(spec, "Ws", "{col}")

    def store(e: Emitter, i: int, col: str) -> None:
        with e.block("for l in T.vectorized(16):"):
            e.line(f"XP[d, m0 + {i}, {col}] = acc{i}[c, l]{ws.format(col=col)} + Bias[d, {col}]")

    def vnni(e: Emitter, rows: int) -> None:  # the tile's products on vpdpbusd, from Xq
        col = f"(pn * {nr} + c) * 16 + l"
        quant.accumulate_vnni(
            e, rows, nr, "c", spec.ip // 4, lambda i, k: f"Xq[m0 + {i}, T.ramp({k} * 4, 1, 4)]",
            lambda k: f"W[d, pn * {nr} + c, {k}, T.ramp(0, 1, 64)]",
            lambda i: quant.dequantized(f"qacc{i}[c, l]", f"Wsum[d, {col}]", f"Xsc[m0 + {i}]", f"Ws[d, {col}]",
                                        f"qacc{i}r[c, l]"),
            a2=lambda i, k: f"Xr[m0 + {i}, T.ramp({k} * 4, 1, 4)]")

    e.line("rows: T.let[T.int64] = seq * batch")
    gemm(e, tile=spec.gemm_rows, panel=nr, panels=spec.gates * spec.hp // LANES // nr, depth=spec.input_size,
         x=lambda i: xrow.format(m=f"(m0 + {i})", k="k"), store=store, lead=len(spec.directions),
         widen=lambda w: quant.widen(spec, w), product=vnni if spec.vnni_int8 else None)


def _step_items(e: Emitter, spec: LayerSpec, loop: str, bt: int, phase: str) -> None:
    """One step's work items of direction d: (column tile, batch tile), product then update."""
    e.line(f"nbt: T.let[T.int64] = batch // {bt}")
    e.line(f"nrows: T.let[T.int64] = (batch + {bt - 1}) // {bt}")
    with e.block(f"for w in {loop}({spec.hp // LANES} * nrows):"):
        lets, wr = item_order(spec, f"{spec.hp // LANES} * nrows")
        e.lines(lets)
        e.line(f"jo: T.let[T.int64] = {wr} // nrows")
        e.line(f"bi: T.let[T.int64] = {wr} % nrows")
        e.line(time_index(spec))
        e.line("cur: T.let[T.int64] = t % 2")
        e.line(f"b0: T.let[T.int64] = bi * {bt}")
        if spec.cell == "gru" and phase == "full":
            e.line(f'rn = T.alloc_buffer(({bt}, 16), "float32")')
        # the recurrent products: a full tile, or the last, partial one with one variant per
        # remainder so that its rows also share one pass over R; they add into XP in place
        with e.block("if bi < nbt:"):
            _recurrent_product(e, spec, bt, phase)
        for rem in range(1, bt - 1):
            with e.block(f"elif batch % {bt} == {rem}:"):
                _recurrent_product(e, spec, rem, phase)
        if bt > 1:
            with e.block("else:"):
                _recurrent_product(e, spec, bt - 1, phase)
        # the gates and state update, once for whichever tile (keeps code size and build time down)
        with e.block(f"for i in T.serial(T.min({bt}, batch - b0)):"):
            cell.row_update(e, spec, phase)


def _recurrent_product(e: Emitter, spec: LayerSpec, rows: int, phase: str) -> None:
    """XP[d, tt, b0 + i, tile jo] += H[b0 + i] @ R[d, :, tile jo] for `rows` rows, in registers.

    phase "full": every gate (GRU: the new gate's part to `rn`, apart); "zr": GRU's z and r only;
    "n": GRU's new gate, from RH = r * H instead of H."""
    g_ = spec.gates
    gates = {"full": list(range(g_)), "zr": [0, 1], "n": [2]}[phase]
    src = "RH[d, b0 + {i}, k]" if phase == "n" else "Hs[cur, d, b0 + {i}, k]"
    ng, g0 = len(gates), gates[0]
    col = f"(jo * {g_} + g + {g0}) * 16 + l"
    if spec.vnni_int8:  # from Hq (H, or RH in phase n, quantized by the phase before)
        quant.accumulate_vnni(
            e, rows, ng, "g", spec.hp // 4, lambda i, k: quant.hq(spec, f"b0 + {i}", f"T.ramp({k} * 4, 1, 4)"),
            lambda k: f"R[d, jo, {k}, g + {g0}, T.ramp(0, 1, 64)]",
            lambda i: quant.dequantized(f"qacc{i}[g, l]", f"Rsum[d, {col}]", quant.h_scale(spec, f"b0 + {i}"),
                                        f"Rs[d, {col}]"))
    else:
        r = quant.widen(spec, f"R[d, jo, k, g + {g0}, l]")
        accumulate(e, rows, ng, "g", spec.hp, lambda i: f"{src.format(i=i)} * {r}")
        if rs := quant.scale(spec, "Rs", col):  # widened int8: each column's scale, once per step
            for i in range(rows):
                with e.block(f"for g in T.unroll({ng}):"), e.block("for l in T.vectorized(16):"):
                    e.line(f"acc{i}[g, l] = acc{i}[g, l]{rs}")
    for i in range(rows):
        tt = "tt"
        if spec.seq_lens:  # each row has its own step under sequence_lens (reverse starts at len - 1)
            e.line(f"tr{i}: T.let[T.int64] = {cell.row_time(spec, f'b0 + {i}')}")
            tt = f"tr{i}"
        xp = f"XP[d, {tt} * batch + b0 + {i}, (jo * {g_} + g + {g0}) * 16 + l]"
        apart = spec.cell == "gru" and phase == "full"  # the new gate's recurrent part: r * (R h + Rb)
        with e.block(f"for g in T.unroll({2 if apart else ng}):"), e.block("for l in T.vectorized(16):"):
            e.line(f"{xp} = {xp} + acc{i}[g, l]")
        if apart:
            with e.block("for l in T.vectorized(16):"):
                e.line(f"rn[{i}, l] = acc{i}[2, l]")
