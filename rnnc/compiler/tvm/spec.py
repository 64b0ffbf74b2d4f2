"""What shapes the generated code of one recurrent node, the tile defaults, and the kernel signature.

`LayerSpec` is read by both kernel generators (`kernels` for the CPU, `cuda` for the GPU);
`signature(spec, target)` is the one statement of the layer kernel's parameters, in order, which
both generators declare and the lowering passes its arguments in. `Tuning` holds the tile sizes
that `tune.py` searches; its defaults are the defaults of every spec.
"""
from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rnnc.compiler.tvm.emit import Param

LANES = 16
# multiply-adds per step (batch x gates x Hp^2) under which a layer runs serially: a
# parallel step then costs more in its barrier (~0.2-1 us) than the second core saves
SERIAL_BELOW = 1 << 17
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ACTIVATIONS = ("Sigmoid", "Tanh", "Relu")
TARGETS = ("llvm", "cuda")
# what a layer's weights are stored as (`quant`): fp32; bf16 (the upper half of float32, widened in
# the inner loop); int8 (a scale per gate row, on VNNI's u8 x s8 products, or widened to float32)
PRECISIONS = ("fp32", "bf16", "int8")
WEIGHT_DTYPES = {"fp32": "float32", "bf16": "uint16", "int8": "int8"}
# Y layouts: Y's dims (D directions, H units, DH = D * H) and where (tt, d, b, j) lands.
Y_LAYOUTS = {
    "tdbh": (("seq", "D", "batch", "H"), "{tt}, d, {b}, {j}"),  # ONNX layout 0
    "tbdh": (("seq", "batch", "DH"), "{tt}, {b}, d * {H} + {j}"),  # next layer's X, directions merged
    "btdh": (("batch", "seq", "DH"), "{b}, {tt}, d * {H} + {j}"),  # batch-major, directions merged
    "btd_h": (("batch", "seq", "D", "H"), "{b}, {tt}, d, {j}"),  # ONNX layout 1
}
# Y_h / Y_c layouts, likewise
YH_LAYOUTS = {
    "dbh": (("D", "batch", "H"), "d, {b}, {j}"),  # ONNX layout 0
    "bdh": (("batch", "DH"), "{b}, d * {H} + {j}"),  # h_n batch-major, directions merged
    "bd_h": (("batch", "D", "H"), "{b}, d, {j}"),  # ONNX layout 1
}


@dataclass(frozen=True)
class Tuning:
    """The tile sizes `tune.py` searches; the defaults are what a build, a LayerSpec and a DenseSpec use untuned."""

    # measured on a 2-core Sapphire Rapids at hidden 256, batch 16: (6, 6) 5-7% faster than (4, 4)
    batch_tile: int = 6  # rows of a recurrent step's register tile (rows sharing one pass over R)
    gemm_rows: int = 6  # rows of the input projection's and the dense head's register tile

    def as_dict(self) -> dict[str, int]:
        return {"batch_tile": self.batch_tile, "gemm_rows": self.gemm_rows}


DEFAULT_TILES = Tuning()
# Without AVX-512's 32 vector registers a 6-row tile over 16-wide column blocks spills. Measured on
# a 2-core AMD EPYC VM that shows LLVM AVX2 only (znver1), one thread, all 16 (batch_tile,
# gemm_rows) pairs of {1,2,3,6}^2 interleaved in one process: (1, 1) took 0.71x and 0.67x the
# time of (6, 6) on timeseries-lstm (hidden 64, batch 1 and 8, 64 steps), 0.86x and 0.80x on
# DeepBench's LSTM 512 (batch 1 and 4, 25 steps), the fastest in three of the four, within 4% in
# the fourth.
NARROW_TILES = Tuning(1, 1)


def padded(units: int) -> int:
    """`units` rounded up to a multiple of LANES: the width of the 16-lane column tiles."""
    return -(-units // LANES) * LANES


def default_tiles(vector_bits: int) -> Tuning:
    """The untuned tiles for a CPU whose widest vector registers have this many bits."""
    return DEFAULT_TILES if vector_bits >= 512 else NARROW_TILES


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
    peepholes: bool = False  # LSTM only: ONNX's P (gate order i, o, f), after C0
    linear_before_reset: bool = True  # GRU: False is ONNX's default, r applied before R (two phases)
    seq_lens: bool = False  # ONNX sequence_lens: an int32 [batch] input after P (CPU only)
    batch_tile: int = DEFAULT_TILES.batch_tile  # a partial last tile has its own variant
    gemm_rows: int = DEFAULT_TILES.gemm_rows
    serial_below: int = -1  # multiply-adds per step under which steps run serially; -1: SERIAL_BELOW
    precision: str = "fp32"  # fp32 | bf16 | int8: how W and R are stored (`quant`); state and gates stay float32
    vnni: bool = False  # int8 only: products on AVX512-VNNI (vpdpbusd), else int8 widened to float32
    amx_from: int = 0  # bf16 and VNNI int8: batch sizes from which a call runs the AMX body (`amx`); 0: never
    chunks: int = 0  # a step's work items in this many contiguous chunks, reversed on odd steps (`item_order`); 0: none

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def hp(self) -> int:
        """Units padded to a multiple of 16 (the CPU kernels' column tiles)."""
        return padded(self.hidden)

    @property
    def acts(self) -> tuple[str, ...]:
        if self.activations:
            return self.activations
        defaults = {"lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh"), "rnn": ("Tanh",)}
        return defaults[self.cell] * len(self.directions)

    @property
    def vnni_int8(self) -> bool:
        """int8 products on VNNI: activations quantized to uint8, weights in 64-byte k-groups of 4."""
        return self.precision == "int8" and self.vnni

    @property
    def fixed_h(self) -> bool:
        """VNNI int8 whose H cannot leave [-1, 1] after the first step (LSTM's o * h(c) and RNN's
        f with bounded activations; GRU's convex mix with a sigmoid z, from a zero state): H is
        quantized at the fixed scale 1/127 by the cell update itself, into Hq[1 - cur], with no
        phase and barrier of its own per step (an initial H0 still gets a per-row scale at step 0).
        Not for GRU's r-before-R (RH has its own phase) nor sequence_lens (rows keep their state)."""
        if not self.vnni_int8 or self.seq_lens or (self.cell == "gru" and not self.linear_before_reset):
            return False
        bounded, acts = ("Sigmoid", "Tanh"), self.acts
        n = len(acts) // len(self.directions)
        for d in range(len(self.directions)):
            a = acts[d * n:(d + 1) * n]
            if self.cell == "lstm" and not (a[0] in bounded and a[2] in bounded):
                return False
            if self.cell == "gru" and not (a[0] == "Sigmoid" and a[1] in bounded and not self.initial_h):
                return False
            if self.cell == "rnn" and a[0] not in bounded:
                return False
        return True

    @property
    def ip(self) -> int:
        """Input features padded to a multiple of 4 (VNNI's k-group), of 64 with an AMX body (a tile
        row of bytes); the input size otherwise."""
        if not self.vnni_int8:
            return self.input_size
        step = 64 if self.amx_from else 4
        return -(-self.input_size // step) * step

    @property
    def kq(self) -> int:
        """The K of int8 R's packing: Hp, padded to a multiple of 64 with an AMX body (a tile row of bytes)."""
        return -(-self.hp // 64) * 64 if self.vnni_int8 and self.amx_from else self.hp

    @property
    def kp(self) -> int:
        """Hp padded to a multiple of 32: the K of the AMX recurrent products (bf16 pairs, 64 bytes)."""
        return -(-self.hp // 32) * 32

    @property
    def ip2(self) -> int:
        """Input features padded to a multiple of 32: the K of the AMX input projection."""
        return -(-self.input_size // 32) * 32

    def gemm_panel(self) -> int:
        """Column blocks (16 wide) per GEMM register tile: the largest of 4..1 dividing G*Hp/16."""
        return panel(self.gates * self.hp // LANES)


def panel(blocks: int) -> int:
    """Column blocks (16 wide) of a GEMM register tile: the largest of 4..1 dividing `blocks`."""
    return next(n for n in (4, 3, 2, 1) if blocks % n == 0)


def signature(spec: LayerSpec, target: str) -> tuple[Param, ...]:
    """The layer kernel's parameters in order: X, W, R, Bias, [Ws, Rs, [Wsum, Rsum]], [Rbn], [H0], [C0],
    [P], [Lens], then the outputs Y, Yh, Yc whose layout is set. The weights' shapes are the target's
    packing: 16-wide panels with H padded to Hp on the CPU (`kernels.pack`, `quant.pack` below
    fp32), transposed on CUDA (`cuda.pack`). A bf16 layer with an AMX body (`amx`, `spec.amx_from`,
    also where a build's `amx.building` gives it one) takes Wa and Ra after Bias."""
    spec = resolve(spec) if target == "llvm" else spec
    d, g, h, hp, i = len(spec.directions), spec.gates, spec.hidden, spec.hp, spec.input_size
    if spec.precision != "fp32" and target != "llvm":
        raise ValueError(f"{spec.precision} layer kernels are CPU (llvm) only")
    if target == "llvm" and spec.vnni_int8:  # (.., k-group of 4, [gate,] 16 columns x 4 k): vpdpbusd's B operand
        weights = {"W": (d, g * hp // LANES, spec.ip // 4, 4 * LANES), "R": (d, hp // LANES, spec.kq // 4, g, 4 * LANES),
                   "Bias": (d, g * hp), "Rbn": (d, hp), "P": (d, 3, hp)}
    elif target == "llvm":
        weights = {"W": (d, g * hp // LANES, i, LANES), "R": (d, hp // LANES, hp, g, LANES), "Bias": (d, g * hp),
                   "Rbn": (d, hp), "P": (d, 3, hp)}
    elif target == "cuda":
        if spec.seq_lens:
            raise ValueError("the CUDA layer kernel does not take sequence_lens")
        weights = {"W": (d, i, g * h), "R": (d, h, g * h), "Bias": (d, g * h), "Rbn": (d, h), "P": (d, 3, h)}
    else:
        raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    x = ("seq", "batch", i) if spec.x_layout == "tbi" else ("batch", "seq", i)
    wtype = WEIGHT_DTYPES[spec.precision]
    params = [Param("X", x), Param("W", weights["W"], wtype), Param("R", weights["R"], wtype),
              Param("Bias", weights["Bias"])]
    if spec.precision == "int8":  # a scale per packed column (gate row); on VNNI, the zero point's correction
        params += [Param("Ws", (d, g * hp)), Param("Rs", (d, g * hp))]
        if spec.vnni:
            params += [Param("Wsum", (d, g * hp), "int32"), Param("Rsum", (d, g * hp), "int32")]
    if spec.amx_from and spec.precision == "bf16":  # AMX's B operand: k in interleaved pairs, K padded to 32
        params += [Param("Wa", (d, g * hp // LANES, spec.ip2 // 2, 32), "uint16"),
                   Param("Ra", (d, hp // LANES, spec.kp // 2, g, 32), "uint16")]
    if spec.cell == "gru" and spec.linear_before_reset:  # the new gate's Rb, applied inside r * (R h + Rb)
        params.append(Param("Rbn", weights["Rbn"]))
    if spec.initial_h:
        params.append(Param("H0", (d, "batch", h)))
    if spec.initial_c:
        params.append(Param("C0", (d, "batch", h)))
    if spec.peepholes:
        params.append(Param("P", weights["P"]))
    if spec.seq_lens:
        params.append(Param("Lens", ("batch",), "int32"))
    dims = {"D": d, "H": h, "DH": d * h}
    for name, layout, table in (("Y", spec.y_layout, Y_LAYOUTS), ("Yh", spec.yh_layout, YH_LAYOUTS),
                                ("Yc", spec.yc_layout, YH_LAYOUTS)):
        if layout:
            params.append(Param(name, tuple(dims.get(s, s) for s in table[layout][0]), output=True))
    return tuple(params)


def y_index(spec: LayerSpec, tt: str, b: str, j: str) -> str:
    """Where unit j of row b at step tt lands in Y, in its layout."""
    return Y_LAYOUTS[spec.y_layout][1].format(tt=tt, b=b, j=j, H=spec.hidden)


def state_index(layout: str, spec: LayerSpec, b: str, j: str) -> str:
    """Where unit j of row b lands in Y_h or Y_c, in `layout`."""
    return YH_LAYOUTS[layout][1].format(b=b, j=j, H=spec.hidden)


def time_index(spec: LayerSpec) -> str:
    """tt: the step a direction handles at iteration t (reverse runs T-1 .. 0)."""
    dirs = spec.directions
    if dirs == ("forward",):
        return "tt: T.let[T.int64] = t"
    if dirs == ("reverse",):
        return "tt: T.let[T.int64] = seq - 1 - t"
    if dirs == ("forward", "reverse"):
        return "tt: T.let[T.int64] = t + d * (seq - 1 - 2 * t)"
    return "tt: T.let[T.int64] = seq - 1 - t + d * (2 * t + 1 - seq)"  # (reverse, forward)


def item_order(spec: LayerSpec, items: str) -> tuple[list[str], str]:
    """The lets and the name of the work item that loop index w of a step handles: w itself (no
    lets: the in-order kernel's code is as it was), or with `spec.chunks`, `wr`:
    on odd steps w reversed within its chunk of ceil(items / chunks) (TVM's parallel loop gives
    each of its threads one contiguous chunk). Every item still runs once on each step, so any
    order is right; this one makes a core start each step with the panels of R it read last,
    which an LRU cache still holds where R is larger than the core's L2 (a cyclic pass over more
    than the cache misses on every line)."""
    if not spec.chunks:
        return [], "w"
    return [f"wc: T.let[T.int64] = ({items} + {spec.chunks - 1}) // {spec.chunks}",
            "ws: T.let[T.int64] = w // wc * wc",
            f"wr: T.let[T.int64] = T.if_then_else(t % 2 == 1, ws + T.min(ws + wc, {items}) - 1 - w, w)"], "wr"


def check(spec: LayerSpec) -> None:
    """Refuse a spec no generator implements (the lowering words the user-facing errors)."""
    assert spec.cell in GATES, spec.cell
    assert all(d in ("forward", "reverse") for d in spec.directions) and 1 <= len(spec.directions) <= 2
    assert spec.x_layout in ("tbi", "bti")
    assert spec.y_layout is None or spec.y_layout in Y_LAYOUTS
    assert spec.yh_layout is None or spec.yh_layout in YH_LAYOUTS
    assert spec.yc_layout is None or (spec.cell == "lstm" and spec.yc_layout in YH_LAYOUTS)
    assert not (spec.peepholes or spec.initial_c) or spec.cell == "lstm"
    assert all(a in ACTIVATIONS for a in spec.acts)
    assert spec.batch_tile >= 1 and spec.gemm_rows >= 1
    assert spec.precision in PRECISIONS, spec.precision
    assert spec.amx_from >= 0 and (not spec.amx_from or spec.precision == "bf16" or spec.vnni_int8), spec.amx_from


# ---------------------------------------------------------------------------------------------
# the AMX body's choice (`amx`): here, since signature() needs it and amx imports the cell code

# Where the AMX body wins, measured on the 2-core Sapphire Rapids VM (one LSTM layer, I = H, T 25,
# 2 threads, medians of 15 interleaved calls, ms, widened vs AMX): H1024 b1 5.07 vs 4.77, b4 8.33 vs
# 5.44, b16 27.8 vs 9.24; H512 b1 0.80 vs 0.45, b4 1.86 vs 0.78, b16 6.44 vs 2.03; H256 b1 0.19 vs
# 0.14; but H64 b1 0.028 vs 0.038 (its steps are serial in the widened kernel, the AMX body has a
# barrier per step), b4 0.084 vs 0.069. So: every batch where a step is large (the widened kernel
# runs it in parallel even at batch 1, SERIAL_BELOW), else from batch 4.
SMALL_FROM = 4
# int8 (tdpbusd) against VNNI's steps, after AMX's projection in both (LSTM, I = H, T 25, medians of
# interleaved bursts, ms, VNNI vs AMX steps): H512 b1 0.224 vs 0.306, b4 0.589 vs 0.626, b6 0.734 vs
# 0.730, b8 0.912 vs 0.841, b12 1.28 vs 1.15; H1024 b4 2.34 vs 2.56, b6 2.90 vs 2.90, b8 3.96 vs 3.40;
# GRU H512 b6 0.571 vs 0.562, b8 0.740 vs 0.708. A step of few rows reads all of R either way, and
# VNNI's broadcast rows do it with no tile to configure; from 8 rows the tiles' products pay.
INT8_STEPS_FROM = 8
# the AMX choice in force while a model is lowered (`building`): "auto" (by `crossover`), "amx"
# (every batch), None (no AMX body)
_BUILDING: contextvars.ContextVar[str | None] = contextvars.ContextVar("rnnc_tvm_amx", default=None)


@contextmanager
def building(mode: str | None) -> Iterator[None]:
    """While lowering a model: bf16 layers that can run on AMX get an AMX body from `crossover`'s
    batch ("auto"), from batch 1 ("amx"), or none (None)."""
    assert mode in (None, "auto", "amx"), mode
    token = _BUILDING.set(mode)
    try:
        yield
    finally:
        _BUILDING.reset(token)


def resolve(spec: LayerSpec) -> LayerSpec:
    """`spec` with the AMX crossover in force (`building`) where its layer can take the AMX body."""
    mode = _BUILDING.get()
    if mode is None or spec.amx_from or not eligible(spec):
        return spec
    return dataclasses.replace(spec, amx_from=1 if mode == "amx" else crossover(spec))


def crossover(spec: LayerSpec) -> int:
    """The batch from which the AMX body is faster (measured, see SMALL_FROM and INT8_STEPS_FROM).
    An int8 layer with large steps takes AMX's projection at every batch and its steps from
    INT8_STEPS_FROM (`amx.projection_always`)."""
    below = SERIAL_BELOW if spec.serial_below < 0 else spec.serial_below
    large = spec.gates * spec.hp * spec.hp >= below
    if spec.precision == "int8":
        return INT8_STEPS_FROM if large else SMALL_FROM
    return 1 if large else SMALL_FROM


def eligible(spec: LayerSpec) -> bool:
    """bf16, or int8 on VNNI (AMX's tdpbusd takes the same weight layout), with one product per step
    into XP: not GRU's r-before-R (two phases), nor sequence_lens (each row its own step: the tiles'
    rows would not be one step's rows of XP)."""
    return ((spec.precision == "bf16" or spec.vnni_int8) and not (spec.cell == "gru" and not spec.linear_before_reset)
            and not spec.seq_lens)
