"""bf16 layer kernels on AMX tiles (tdpbf16ps): the input projection and the recurrent products.

At batch 1 a recurrent step reads all of R for one row of H: bound by bytes, where the widened
bf16 kernel (`quant`) is as good as it gets. From a few rows on, H[b, K] x R[K, G*H] is a real
GEMM, and the fp32 FMA roof (~184 GFLOP/s on 2 cores here) is what bounds the widened kernel;
AMX's tdpbf16ps does 16x16x32 multiply-adds an instruction (bf16 x bf16 -> fp32). So from
`spec.amx_from` rows of batch on (decided per call, batch is symbolic) the layer runs this body:

- X rows are rounded to bf16 once per call (Xb) and XP = X @ W + Bias is one tiled GEMM: 2 x 2
  tiles of 16 rows x 16 columns in tmm0-3, C initialised from Bias (a tile load of stride 0).
- per step, a work item is (16-unit column tile jo, 16 batch rows): its G gate tiles are loaded
  from XP (the projection), accumulate Hb[cur] x Ra over K in blocks of 32, go back to XP, and
  the float32 cell update (`cell`) follows as in the widened kernel; it also writes H rounded to
  bf16 into Hb[1 - cur], which is what the next step's products read. The cell state, the gates
  and H itself stay float32: only the products' operands are bf16.
- weights in AMX's B layout: pairs of k interleaved (`Ra[d, jo, k // 2, g, 2 * l + k % 2]`,
  `Wa[d, panel, k // 2, 2 * l + k % 2]`), K zero-padded to a multiple of 32. The widened kernel,
  which runs below `amx_from`, keeps its own W and R, so the library holds both (bf16 each).

Tiles need a tile configuration per thread (ldtilecfg, once per work item here: the rows of a
partial batch tile are its own), and Linux needs the process to ask for the tile-data state
once (`request_permission`), without which the first tile instruction is SIGILL. The LLVM target
must name the AMX features (`target_with_amx`): the CPU name LLVM detects in a VM may lack them.
The crossover `AMX_FROM` is measured (see its comment); option bf16_path forces a path.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from rnnc.compiler.tvm import cell
from rnnc.compiler.tvm.emit import Emitter
from rnnc.compiler.tvm.quant import bf16, dequantized, h_scale, hq
from rnnc.compiler.tvm.spec import (INT8_STEPS_FROM, LANES, SERIAL_BELOW, SMALL_FROM, LayerSpec, building,
                                    crossover, eligible, item_order, resolve, time_index)

# which layers get the AMX body is decided in `spec` (its `signature` needs it); named here too
__all__ = ["INT8_STEPS_FROM", "SMALL_FROM", "building", "crossover", "eligible", "resolve", "request_permission", "target_with_amx",
           "pack", "projection", "step_items", "projection_int8", "step_items_int8"]

FEATURES = ("+amx-tile", "+amx-bf16", "+amx-int8")
_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158
_PERMISSION: list[str | None] = []  # the cached answer of `request_permission`


# ---------------------------------------------------------------------------------------------
# the host


def request_permission() -> str | None:
    """Ask Linux for the AMX tile-data state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    once per process: None when granted, else why not (then no tile instruction may run)."""
    if not _PERMISSION:
        _PERMISSION.append(_request())
    return _PERMISSION[0]


def _request() -> str | None:
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"AMX tile permission is a Linux x86_64 request ({platform.system()} {platform.machine()})"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM),
                          ctypes.c_long(_XFEATURE_XTILEDATA))
    except (OSError, AttributeError) as err:
        return f"arch_prctl(ARCH_REQ_XCOMP_PERM) could not be called ({err})"
    if rc != 0:
        import os

        errno = ctypes.get_errno()
        return f"Linux refused the AMX tile-data permission (arch_prctl: {os.strerror(errno)})"
    return None


def target_with_amx(target: dict[str, Any]) -> dict[str, Any]:
    """The llvm target dict with the AMX features added to its mattr."""
    mattr = [*target.get("mattr", [])]
    return {**target, "mattr": mattr + [f for f in FEATURES if f not in mattr]}


# ---------------------------------------------------------------------------------------------
# which layers


# ---------------------------------------------------------------------------------------------
# packing


def pack(spec: LayerSpec, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Wa, Ra: W [D, P, I, 16] and R [D, Hp/16, Hp, G, 16] (`kernels.pack`, float) in bf16, k in
    interleaved pairs (AMX's B operand), K zero-padded to a multiple of 32."""
    from rnnc.compiler.tvm.quant import to_bf16

    w, r = arrays["W"], arrays["R"]
    d_, p_ = w.shape[0], w.shape[1]
    w = np.pad(w, ((0, 0), (0, 0), (0, spec.ip2 - spec.input_size), (0, 0)))
    wa = w.reshape(d_, p_, spec.ip2 // 2, 2, LANES).transpose(0, 1, 2, 4, 3).reshape(d_, p_, spec.ip2 // 2, 32)
    r = np.pad(r, ((0, 0), (0, 0), (0, spec.kp - spec.hp), (0, 0), (0, 0)))
    ra = (r.reshape(d_, spec.hp // LANES, spec.kp // 2, 2, spec.gates, LANES).transpose(0, 1, 2, 4, 5, 3)
          .reshape(d_, spec.hp // LANES, spec.kp // 2, spec.gates, 32))
    return {"Wa": to_bf16(np.ascontiguousarray(wa)), "Ra": to_bf16(np.ascontiguousarray(ra))}


# ---------------------------------------------------------------------------------------------
# TVMScript


def _intrin(name: str, *args: str) -> str:
    return f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.{name}"{"".join(", " + a for a in args)}))'


def _tile(n: int) -> str:
    return f"T.uint8({n})"


def configure(e: Emitter, tiles: dict[int, str]) -> None:
    """ldtilecfg: palette 1, each tile in `tiles` 64 bytes wide and that many rows (an expression)."""
    e.line('cfg = T.alloc_buffer((64,), "uint8")')
    with e.block("for q in T.serial(64):"):
        e.line("cfg[q] = T.uint8(0)")
    e.line("cfg[0] = T.uint8(1)")
    for n, rows in tiles.items():
        e.line(f"cfg[{16 + 2 * n}] = T.uint8(64)")
        e.line(f'cfg[{48 + n}] = T.Cast("uint8", {rows})')
    e.line(_intrin("ldtilecfg", "T.address_of(cfg[0])"))


def load(n: int, at: str, stride: int | str) -> str:
    return _intrin("tileloadd64", _tile(n), _pointer(at, "r"), f"T.int64({stride})")


def store(n: int, at: str, stride: int | str) -> str:
    return _intrin("tilestored64", _tile(n), _pointer(at, "w"), f"T.int64({stride})")


def _pointer(at: str, mask: str) -> str:
    """`Buf[i, j]` as a tvm_access_ptr from there to the buffer's end, not `T.address_of`: TVM
    compacts an allocated buffer to the region its accesses touch, and a tile reaches 16 rows
    past its address (the AMX projection's padded rows were cut off, and its stores overran)."""
    name, index = at.split("[", 1)
    return f'{name}.access_ptr("{mask}", offset={name}.offset_of([{index[:-1]}])[0])'


def dot(c: int, a: int, b: int) -> str:
    return _intrin("tdpbf16ps", _tile(c), _tile(a), _tile(b))


def dot_int8(c: int, a: int, b: int) -> str:
    """C (int32) += A (uint8, 64 k a row) . B (int8, k-groups of 4 x 16 columns a row): tdpbusd."""
    return _intrin("tdpbusd", _tile(c), _tile(a), _tile(b))


def zero(n: int) -> str:
    return _intrin("tilezero", _tile(n))


def round_x(e: Emitter, spec: LayerSpec, xrow: str) -> None:
    """Xb[m] = X row m in bf16 with zeros up to ip2, and the pad rows (up to 32) zero."""
    i_, ip2 = spec.input_size, spec.ip2
    full = i_ // LANES * LANES
    with e.block("for m in T.parallel(seq * batch + 32):"):
        with e.block("if m < seq * batch:"):
            if full:
                with e.block(f"for kb in T.serial({full // LANES}):"), e.block("for l in T.vectorized(16):"):
                    e.line(f"Xb[m, kb * 16 + l] = {bf16(xrow.format(m='m', k='kb * 16 + l'))}")
            if ip2 > full:
                with e.block(f"for k in T.serial({full}, {ip2}):"):
                    x = xrow.format(m="m", k=f"T.min(k, {i_ - 1})")
                    e.line(f"Xb[m, k] = T.if_then_else(k < {i_}, {bf16(x)}, T.uint16(0))")
        with e.block("else:"), e.block(f"for k in T.serial({ip2}):"):
            e.line("Xb[m, k] = T.uint16(0)")


@contextmanager
def _projection_items(e: Emitter, spec: LayerSpec, rows: int) -> Iterator[int]:
    """The loop over the projection's work items (direction d, panel pair pn, `rows` rows from m0),
    every tile configured 16 x 64 bytes; yields nc, the column tiles of an item (2, or 1 where the
    panels are odd)."""
    d_, panels = len(spec.directions), spec.gates * spec.hp // LANES
    nc = 2 if panels % 2 == 0 else 1
    e.line(f"nm: T.let[T.int64] = (seq * batch + {rows - 1}) // {rows}")
    with e.block(f"for w in T.parallel({d_} * nm * {panels // nc}):"):
        e.line(f"d: T.let[T.int64] = w // (nm * {panels // nc})")
        e.line(f"pn: T.let[T.int64] = w % (nm * {panels // nc}) // nm")
        e.line(f"m0: T.let[T.int64] = w % nm * {rows}")
        configure(e, {n: 16 for n in range(8)})
        yield nc


def projection(e: Emitter, spec: LayerSpec) -> None:
    """XP[d, m, :] = Xb[m] @ Wa[d] + Bias[d]: items of 2 row tiles x nc column tiles (tmm0-3),
    A in tmm4-5, B in tmm6-7; rows padded to 32 (XP and Xb have 32 spare rows)."""
    xs, gs = spec.ip2 * 2, spec.gates * spec.hp * 4  # row strides in bytes: Xb, XP
    with _projection_items(e, spec, 32) as nc:
        for r in range(2):
            for c in range(nc):
                e.line(load(r * nc + c, f"Bias[d, (pn * {nc} + {c}) * 16]", 0))
        with e.block(f"for kb in T.serial({spec.ip2 // 32}):"):
            for r in range(2):
                e.line(load(4 + r, f"Xb[m0 + {16 * r}, kb * 32]", xs))
            for c in range(nc):
                e.line(load(6 + c, f"Wa[d, pn * {nc} + {c}, kb * 16, 0]", 64))
                for r in range(2):
                    e.line(dot(r * nc + c, 4 + r, 6 + c))
        for r in range(2):
            for c in range(nc):
                e.line(store(r * nc + c, f"XP[d, m0 + {16 * r}, (pn * {nc} + {c}) * 16]", gs))
        e.line(_intrin("tilerelease"))


@contextmanager
def _items(e: Emitter, spec: LayerSpec, loop: str) -> Iterator[None]:
    """The loop over a step's work items (column tile jo, 16 batch rows from b0, mr of them real)."""
    e.line("nrows: T.let[T.int64] = (batch + 15) // 16")
    with e.block(f"for w in {loop}({spec.hp // LANES} * nrows):"):
        lets, wr = item_order(spec, f"{spec.hp // LANES} * nrows")
        e.lines(lets)
        e.line(f"jo: T.let[T.int64] = {wr} // nrows")
        e.line(f"b0: T.let[T.int64] = {wr} % nrows * 16")
        e.line(time_index(spec))
        e.line("cur: T.let[T.int64] = t % 2")
        e.line("mr: T.let[T.int64] = T.min(batch - b0, 16)")
        yield


def step_items(e: Emitter, spec: LayerSpec, loop: str) -> None:
    """One step's work items of direction d, (column tile jo, 16 batch rows): XP's gate tiles
    (tmm0..G-1) += Hb[cur] @ Ra over K, then the cell update of each row (GRU's new gate, whose
    recurrent part stays apart, from a zero tile into `rn`)."""
    g_, gs = spec.gates, spec.gates * spec.hp * 4
    with _items(e, spec, loop):
        apart = spec.cell == "gru"  # linear_before_reset: r * (R h + Rb), R h in rn
        if apart:
            e.line('rn = T.alloc_buffer((16, 16), "float32")')
        configure(e, {**{g: "mr" for g in range(g_)}, 4: "mr", 5: 16, 6: 16})
        for g in range(g_):
            if apart and g == 2:
                e.line(_intrin("tilezero", _tile(g)))
            else:
                e.line(load(g, f"XP[d, tt * batch + b0, (jo * {g_} + {g}) * 16]", gs))
        with e.block(f"for kb in T.serial({spec.kp // 32}):"):
            e.line(load(4, "Hb[cur, d, b0, kb * 32]", spec.kp * 2))
            for g in range(g_):
                e.line(load(5 + g % 2, f"Ra[d, jo, kb * 16, {g}, 0]", g_ * 64))
                e.line(dot(g, 4, 5 + g % 2))
        for g in range(g_):
            if apart and g == 2:
                e.line(store(g, "rn[0, 0]", 64))
            else:
                e.line(store(g, f"XP[d, tt * batch + b0, (jo * {g_} + {g}) * 16]", gs))
        e.line(_intrin("tilerelease"))
        with e.block("for i in T.serial(mr):"):
            cell.row_update(e, spec, "full")


def projection_always(spec: LayerSpec) -> bool:
    """int8 layers whose steps run in parallel at every batch take AMX's projection at every batch,
    and VNNI's steps below `amx_from`: at batch 1 the steps read all of R for one row (VNNI's
    broadcast row against R is as good as a tile of which 15 rows are idle), but the projection of
    T rows at once is a GEMM that AMX does at 16x VNNI's multiply-adds."""
    below = SERIAL_BELOW if spec.serial_below < 0 else spec.serial_below
    return spec.vnni_int8 and spec.gates * spec.hp * spec.hp >= below


# ---------------------------------------------------------------------------------------------
# int8 (tdpbusd): the VNNI packing is AMX's B operand as it is (a 64-byte row: 16 columns x 4 k)


def projection_int8(e: Emitter, spec: LayerSpec) -> None:
    """XP[d, m, :] = X(m) @ W[d] + Bias[d] from X's two bytes (`quant`, Xq and Xr): items of 16 rows
    x nc column tiles, int32 sums of Xq in tmm0-1 and of Xr in tmm2-3, A in tmm4-5, B in tmm6-7,
    then dequantized (`quant.dequantized`) row by row; Xq has 16 spare rows, XP none."""
    with _projection_items(e, spec, 16) as nc:
        for n in range(2 * nc):
            e.line(zero(n))
        with e.block(f"for kb in T.serial({spec.ip // 64}):"):
            e.line(load(4, "Xq[m0, kb * 64]", spec.ip))
            e.line(load(5, "Xr[m0, kb * 64]", spec.ip))
            for c in range(nc):
                e.line(load(6 + c, f"W[d, pn * {nc} + {c}, kb * 16, 0]", 64))
                e.line(dot_int8(c, 4, 6 + c))
                e.line(dot_int8(nc + c, 5, 6 + c))
        e.line(f'acc = T.alloc_buffer(({2 * nc}, 16, 16), "int32")')
        for n in range(2 * nc):
            e.line(store(n, f"acc[{n}, 0, 0]", 64))
        e.line(_intrin("tilerelease"))
        col = f"(pn * {nc} + c) * 16 + l"
        with e.block("for i in T.serial(T.min(16, seq * batch - m0)):"):
            with e.block(f"for c in T.unroll({nc}):"), e.block("for l in T.vectorized(16):"):
                value = dequantized("acc[c, i, l]", f"Wsum[d, {col}]", "Xsc[m0 + i]", f"Ws[d, {col}]",
                                    f"acc[{nc} + c, i, l]")
                e.line(f"XP[d, m0 + i, {col}] = {value} + Bias[d, {col}]")


def step_items_int8(e: Emitter, spec: LayerSpec, loop: str) -> None:
    """One step's work items of direction d, (column tile jo, 16 batch rows): int32 sums of Hq
    (H in uint8, quantized by the phase before) x R over K in blocks of 64 in tmm0..G-1 (A in
    tmm4, B in tmm5-6), dequantized into XP (GRU's new gate into `rn`, apart), then each row's cell
    update."""
    g_ = spec.gates
    with _items(e, spec, loop):
        configure(e, {**{g: "mr" for g in range(g_)}, 4: "mr", 5: 16, 6: 16})
        for g in range(g_):
            e.line(zero(g))
        with e.block(f"for kb in T.serial({spec.kq // 64}):"):
            e.line(load(4, hq(spec, "b0", "kb * 64"), spec.kq))
            for g in range(g_):
                e.line(load(5 + g % 2, f"R[d, jo, kb * 16, {g}, 0]", g_ * 64))
                e.line(dot_int8(g, 4, 5 + g % 2))
        e.line(f'acc = T.alloc_buffer(({g_}, 16, 16), "int32")')
        for g in range(g_):
            e.line(store(g, f"acc[{g}, 0, 0]", 64))
        e.line(_intrin("tilerelease"))
        apart = spec.cell == "gru"  # linear_before_reset: r * (R h + Rb), R h in rn
        if apart:
            e.line('rn = T.alloc_buffer((16, 16), "float32")')
        def value(g: str) -> str:  # gate g's int32 sums of row i, dequantized
            col = f"(jo * {g_} + {g}) * 16 + l"
            return dequantized(f"acc[{g}, i, l]", f"Rsum[d, {col}]", h_scale(spec, "b0 + i"), f"Rs[d, {col}]")

        xp = f"XP[d, tt * batch + b0 + i, (jo * {g_} + g) * 16 + l]"
        with e.block("for i in T.serial(mr):"):
            with e.block(f"for g in T.unroll({2 if apart else g_}):"), e.block("for l in T.vectorized(16):"):
                e.line(f"{xp} = {xp} + {value('g')}")
            if apart:
                with e.block("for l in T.vectorized(16):"):
                    e.line(f"rn[i, l] = {value('2')}")
            cell.row_update(e, spec, "full")
