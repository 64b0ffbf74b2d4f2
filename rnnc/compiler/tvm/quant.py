"""Layer weights below float32 on the CPU: bf16 and int8 packing, and the TIR that reads them.

At batch 1 a recurrent step is bound by reading R (all of it, every step): fewer bytes per weight
is what goes faster. So the state, the gates and the cell arithmetic stay float32 (`cell`), and
only W and R change:

- bf16: the upper 16 bits of float32 (rounded to nearest even), stored as uint16 and widened in
  the inner loop by a shift (vpmovzxwd + vpslld), then FMA in float32 against float32 H. Half the
  bytes of R; needs no avx512_bf16, so it runs on every CPU.
- int8: symmetric, one scale per packed column (= per gate row of W and of R), `q = round(w / s)`,
  `s = max|row| / 127`. On a CPU with AVX512-VNNI (`spec.vnni`) the products are `vpdpbusd`
  (u8 x s8 -> s32, 64 multiply-adds an instruction): the activations (X rows once per call, H
  rows once per step, in a phase of their own before the step's products) are quantized to uint8
  with zero point 128 and a scale per row, `a_q = round(a / s_a) + 128`, X in two bytes (below);
  the weights sit in
  64-byte groups of 16 columns x 4 k, as vpdpbusd's B operand wants, K padded to a multiple of 4
  with zeros; the zero point is taken out with the column sums of the int8 weights (exact in
  int32), and `s_a * s_w[col]` dequantizes into float32 XP. Without VNNI the int8 weights are
  widened to float32 in the inner loop (still one byte per weight read) against float32
  activations, and scaled by s_w per column.

Quantizing H per step (rather than one scale per call) costs one short phase per step, a barrier
and one pass over H, and keeps every step's scale tight, also for ReLU cells and initial states
whose size is not bounded. X is another matter: simulated in float64 on DeepBench's LSTM 512
(uniform weights, standard normal X), int8 weights alone give 7.8e-3 normwise error, int8 X rows
double it (1.5e-2, as ORT's DynamicQuantizeLSTM's 1.7e-2), int8 H rows add nothing (7.5e-3). So X
is quantized in two bytes: q1 = round(x / s), and its residual q2 = round((x / s - q1) * 254), each
its own vpdpbusd against the same weights (X's error then 1/254 of int8's: 7.3e-3 in all). The
projection does twice the integer products, which costs little: it is one GEMM for all steps,
while the recurrence, which reads R every step, stays single-byte.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rnnc.compiler.tvm.emit import Emitter
from rnnc.compiler.tvm.spec import LANES, LayerSpec

ZERO_POINT = 128  # uint8 activations: a_q = round(a / s) + 128, in [1, 255]
FIXED_SCALE = 1 / 127  # H's scale where it stays in [-1, 1] (`LayerSpec.fixed_h`)
RESIDUAL = 254  # X's second byte: its residual x / s - q1 (in [-1/2, 1/2]) times this, rounded


# ---------------------------------------------------------------------------------------------
# packing (numpy, at build time)


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float -> the upper 16 bits of its float32, rounded to nearest even, as uint16."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16(a: np.ndarray) -> np.ndarray:
    """uint16 bf16 -> float32 (what the kernel's inner loop computes)."""
    return (a.astype(np.uint32) << 16).view(np.float32)


def _int8_columns(m: np.ndarray, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of `m` with one scale per column, reduced over `axis`: (q, scale)."""
    amax = np.abs(m).max(axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.rint(m / scale), -127, 127).astype(np.int8), scale


def pack(spec: LayerSpec, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float packing of `kernels.pack` (float64, W [D, P, I, 16], R [D, Hp/16, Hp, G, 16]) at
    `spec.precision`: W and R as uint16 (bf16) or int8 with their scales Ws, Rs [D, G*Hp] (and on
    VNNI, in k-groups of 4 with the column sums Wsum, Rsum); the rest float32."""
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    w, r = arrays["W"], arrays["R"]
    if spec.precision == "fp32":
        return out
    if spec.precision == "bf16":
        out["W"], out["R"] = to_bf16(w), to_bf16(r)  # with an AMX body, `kernels.pack` adds `amx.pack`'s
        return out
    d_, g_, hp = len(spec.directions), spec.gates, spec.hp
    wq, ws = _int8_columns(w, (2,))  # W [D, P, I, 16]: a scale per (panel, lane) = packed column
    rq, rs = _int8_columns(r, (2,))  # R [D, Hp/16, Hp, G, 16]: per (tile, gate, lane)
    out["Ws"] = np.ascontiguousarray(ws.reshape(d_, g_ * hp), dtype=np.float32)
    out["Rs"] = np.ascontiguousarray(rs.reshape(d_, g_ * hp), dtype=np.float32)  # (jo, g, l) = packed order
    if not spec.vnni:
        out["W"], out["R"] = wq, rq
        return out
    out["Wsum"] = wq.astype(np.int32).sum(axis=2).reshape(d_, g_ * hp)
    out["Rsum"] = rq.astype(np.int32).sum(axis=2).reshape(d_, g_ * hp)
    wq = np.pad(wq, ((0, 0), (0, 0), (0, spec.ip - spec.input_size), (0, 0)))
    # [D, P, K, 16] -> [D, P, K/4, 16, 4]: element (l, q) of k-group kg is column l at k = 4 kg + q
    out["W"] = np.ascontiguousarray(wq.reshape(d_, -1, spec.ip // 4, 4, LANES).transpose(0, 1, 2, 4, 3)
                                    .reshape(d_, -1, spec.ip // 4, 4 * LANES))
    rq = np.pad(rq, ((0, 0), (0, 0), (0, spec.kq - hp), (0, 0), (0, 0)))  # K to a tile row of bytes under AMX
    out["R"] = np.ascontiguousarray(rq.reshape(d_, hp // LANES, spec.kq // 4, 4, g_, LANES).transpose(0, 1, 2, 4, 5, 3)
                                    .reshape(d_, hp // LANES, spec.kq // 4, g_, 4 * LANES))
    return out


# ---------------------------------------------------------------------------------------------
# TVMScript


def widen(spec: LayerSpec, load: str) -> str:
    """A weight element as float32 in the inner loop of the float products (not VNNI's)."""
    if spec.precision == "bf16":  # the upper half of a float32: zero-extend, shift by 16
        return f'T.reinterpret("float32", T.shift_left(T.Cast("uint32", {load}), T.uint32(16)))'
    if spec.precision == "int8":
        return f'T.Cast("float32", {load})'
    return load


def scale(spec: LayerSpec, scales: str, col: str) -> str:
    """` * s_w[col]` where widened int8 weights' products need their column's scale, else ''."""
    return f" * {scales}[d, {col}]" if spec.precision == "int8" and not spec.vnni else ""


def _u8x64(group: str) -> str:
    """4 uint8 (one k-group of one row) broadcast to vpdpbusd's A operand (64 bytes)."""
    a = f'T.broadcast(T.reinterpret("int32", {group}), 16)'
    return f'T.reinterpret("int8x64", {a})' if _llvm_bytes() else a


def _b(load: str) -> str:
    return load if _llvm_bytes() else f'T.reinterpret("int32x16", {load})'


def _llvm_bytes() -> bool:
    """LLVM 20 and later declare vpdpbusd's A and B operands <64 x i8>, older ones <16 x i32>."""
    from tvm.target import codegen

    return codegen.llvm_version_major() >= 20


def accumulate_vnni(e: Emitter, rows: int, width: int, var: str, groups: int, a: Callable[[int, str], str],
                    b: Callable[[str], str], dequant: Callable[[int], str],
                    a2: Callable[[int, str], str] | None = None) -> None:
    """`acc{i}[var, l]` (float32) = dequant(i) of sum over k-groups of a(i) . b, in int32 registers.

    a(i, k): the 4 uint8 of row i's k-group k (a `T.ramp` load); b(k): the group's 64 int8 (16
    columns x 4, the `var`-th 16-column block); dequant(i): the float32 of `qacc{i}[var, l]` (and with
    `a2`, a second byte of each activation, of `qacc{i}r[var, l]` summed the same way), per lane."""
    accs: list[tuple[str, Callable[[str], str]]] = [(f"qacc{i}", lambda k, i=i: a(i, k)) for i in range(rows)]
    if a2 is not None:
        accs += [(f"qacc{i}r", lambda k, i=i: a2(i, k)) for i in range(rows)]
    for acc, _ in accs:
        e.line(f'{acc} = T.alloc_buffer(({width}, 16), "int32")')
        with e.block(f"for {var}, l in T.grid({width}, 16):"):
            e.line(f"{acc}[{var}, l] = 0")
    lanes = "T.ramp(0, 1, 16)"
    with e.block(f"for k in T.serial({groups}):"):
        for acc, src in accs:
            with e.block(f"for {var} in T.unroll({width}):"):
                e.line(f'{acc}[{var}, {lanes}] = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", '
                       f"{acc}[{var}, {lanes}], {_u8x64(src('k'))}, {_b(b('k'))})")
    for i in range(rows):
        e.line(f'acc{i} = T.alloc_buffer(({width}, 16), "float32")')
        with e.block(f"for {var} in T.unroll({width}):"), e.block("for l in T.vectorized(16):"):
            e.line(f"acc{i}[{var}, l] = {dequant(i)}")


def dequantized(acc: str, colsum: str, row_scale: str, col_scale: str, residual: str | None = None) -> str:
    """float32 of an int32 vpdpbusd sum: (acc - 128 * colsum) * s_row * s_col; with the sum of the
    residual byte `residual`, (acc - 128 colsum + (residual - 128 colsum) / 254) * s_row * s_col."""
    main = f'T.Cast("float32", {acc} - {ZERO_POINT} * {colsum})'
    if residual is not None:
        main = (f'({main} + T.Cast("float32", {residual} - {ZERO_POINT} * {colsum}) * '
                f"T.float32({1 / RESIDUAL!r}))")
    return f"{main} * ({row_scale} * {col_scale})"


def quantize_row(e: Emitter, src: Callable[[str], str], n: int, padded: int, dst: Callable[[str], str],
                 scale_dst: str, residual: Callable[[str], str] | None = None) -> None:
    """dst(k) = round(src(k) / s) + 128 for k < n (128 up to `padded`), scale_dst = s = max|src| / 127;
    `residual(k)`: the second byte, round((src(k) / s - q1) * 254) + 128.

    The max runs 16 lanes wide, then across them; the scale of an all-zero row is tiny, not 0."""
    full = n // LANES * LANES
    e.line('mx = T.alloc_buffer((16,), "float32")')
    with e.block("for l in T.vectorized(16):"):
        e.line("mx[l] = T.float32(0)")
    if full:
        with e.block(f"for kb in T.serial({full // LANES}):"), e.block("for l in T.vectorized(16):"):
            e.line(f"mx[l] = T.max(mx[l], T.fabs({src('kb * 16 + l')}))")
    for k in range(full, n):  # a row shorter than a multiple of 16: the rest one by one
        e.line(f"mx[0] = T.max(mx[0], T.fabs({src(str(k))}))")
    with e.block("for l in T.serial(1, 16):"):
        e.line("mx[0] = T.max(mx[0], mx[l])")
    e.line("amax: T.let[T.float32] = T.max(mx[0], T.float32(1e-30))")
    e.line(f"{scale_dst} = amax / T.float32(127)")
    e.line("inv: T.let[T.float32] = T.float32(127) / amax")

    def u8(v: str) -> str:
        return f'T.Cast("uint8", T.Cast("int32", T.nearbyint({v})) + {ZERO_POINT})'

    def q(k: str) -> str:
        return u8(f"{src(k)} * inv")

    def r(k: str) -> str:  # no let inside a vectorized loop: LLVM shares the product with q's
        return u8(f"({src(k)} * inv - T.nearbyint({src(k)} * inv)) * T.float32({RESIDUAL})")

    outs = [(dst, q)] + ([(residual, r)] if residual is not None else [])
    if full:
        with e.block(f"for kb in T.serial({full // LANES}):"), e.block("for l in T.vectorized(16):"):
            for out, value in outs:
                e.line(f"{out('kb * 16 + l')} = {value('kb * 16 + l')}")
    for k in range(full, n):
        for out, value in outs:
            e.line(f"{out(str(k))} = {value(str(k))}")
    if padded > n:  # K's padding at the zero point (its weights are 0)
        with e.block(f"for kpad in T.serial({n}, {padded}):"):
            for out, _ in outs:
                e.line(f"{out('kpad')} = T.uint8({ZERO_POINT})")


def bf16(value: str) -> str:
    """float32 -> bf16 bits (uint16), rounded to nearest even, as `to_bf16`."""
    bits = f'T.reinterpret("uint32", {value})'
    return (f'T.Cast("uint16", T.shift_right({bits} + T.uint32(32767) + '
            f'T.bitwise_and(T.shift_right({bits}, T.uint32(16)), T.uint32(1)), T.uint32(16)))')


def hq(spec: LayerSpec, b: str, k: str, buf: str = "cur") -> str:
    """Hq's element (row b, k) that a step's products read: double-buffered ([cur] read, [1 - cur]
    written by the cell update) under a fixed scale, else the per-step phase's one buffer."""
    return f"Hq[{buf}, d, {b}, {k}]" if spec.fixed_h else f"Hq[d, {b}, {k}]"


def h_scale(spec: LayerSpec, b: str) -> str:
    """The scale of row b of the Hq a step reads: fixed, or the phase's (step 0's, for H0, under a fixed one)."""
    if not spec.fixed_h:
        return f"Hsc[d, {b}]"
    if spec.initial_h:
        return f"T.if_then_else(t == 0, Hsc[d, {b}], T.float32({FIXED_SCALE!r}))"
    return f"T.float32({FIXED_SCALE!r})"


def fixed_u8(value: str) -> str:
    """H in [-1, 1] as uint8 at the fixed scale (clamped: the activations' approximations may pass 1 by an ulp)."""
    q = f'T.max(T.min(T.Cast("int32", T.nearbyint({value} * T.float32(127))), 127), -127)'
    return f'T.Cast("uint8", {q} + {ZERO_POINT})'
