"""The TIR layer kernels (CPU, and CUDA's logic on the CPU) and the dense head against float64 references.

The recurrent oracle is the project's one: `rnnc.graphs.reference`, which evaluates an ONNX LSTM,
GRU or RNN node in float64 with the operator pages' symbols. Arguments are passed in the order of
`spec.signature`, as the lowering passes them.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from onnx import helper

import tvm  # noqa: E402 - a hard dependency of rnnc: never skipped

from rnnc.compiler.tvm import cuda, dense, kernels  # noqa: E402
from rnnc.compiler.tvm.dense import DenseSpec  # noqa: E402
from rnnc.compiler.tvm.spec import LayerSpec, signature  # noqa: E402
from rnnc.compiler.tvm.target import configure_threads, cpu_count, host_target  # noqa: E402
from rnnc.graphs import reference  # noqa: E402

pytestmark = pytest.mark.tvm

TOL = 1e-5  # relative to max |reference|, float32 kernels against float64
_DIRECTION = {("forward",): "forward", ("reverse",): "reverse", ("forward", "reverse"): "bidirectional"}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    configure_threads(cpu_count())  # the parallel steps and their barriers run on every core


def onnx_reference(spec: LayerSpec, X, W, R, B, h0=None, c0=None, P=None, lens=None):
    """The ONNX node `spec` stands for, in float64, layout 0: Y [T, D, B, H], Y_h and Y_c [D, B, H]."""
    attrs = {"hidden_size": spec.hidden, "direction": _DIRECTION[spec.directions]}
    if spec.activations:
        attrs["activations"] = list(spec.activations)
    if spec.clip is not None:
        attrs["clip"] = spec.clip
    if spec.cell == "gru":
        attrs["linear_before_reset"] = int(spec.linear_before_reset)
    node = helper.make_node(spec.cell.upper(), ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], **attrs)
    outs = reference.recurrent(reference.parse_attributes(node), X, W, R, B, sequence_lens=lens, initial_h=h0,
                               initial_c=c0, P=P)
    return outs if len(outs) == 3 else (*outs, None)


def in_layouts(spec: LayerSpec, Y, Yh, Yc) -> list[np.ndarray]:
    """The reference's outputs in the layouts the spec stores them (the kernel's outputs, in order)."""
    T, D, batch, H = Y.shape
    want = []
    if spec.y_layout:
        want.append({"tdbh": Y, "tbdh": Y.transpose(0, 2, 1, 3).reshape(T, batch, D * H),
                     "btdh": Y.transpose(2, 0, 1, 3).reshape(batch, T, D * H),
                     "btd_h": Y.transpose(2, 0, 1, 3)}[spec.y_layout])
    for layout, state in ((spec.yh_layout, Yh), (spec.yc_layout, Yc)):
        if layout:
            want.append({"dbh": state, "bdh": state.transpose(1, 0, 2).reshape(batch, D * H),
                         "bd_h": state.transpose(1, 0, 2)}[layout])
    return want


def call(lib, spec: LayerSpec, target: str, values: dict[str, np.ndarray], T: int, batch: int) -> list[np.ndarray]:
    """Run a compiled layer on `values` by parameter name; its outputs, in order."""
    params = signature(spec, target)
    dims = {"seq": T, "batch": batch}
    args = [tvm.runtime.tensor(np.ascontiguousarray(values[p.name], dtype=p.dtype)) for p in params if not p.output]
    outs = [tvm.runtime.tensor(np.zeros([dims.get(s, s) for s in p.shape], p.dtype)) for p in params if p.output]
    lib["main"](*args, *outs)
    return [o.numpy() for o in outs]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= TOL, f"relative error {err:.2e} (worst at {np.unravel_index(np.abs(got - want).argmax(), got.shape)})"


def _inputs(spec: LayerSpec, T: int, batch: int, rng, scale: float = 1.0):
    D, G, H, I = len(spec.directions), spec.gates, spec.hidden, spec.input_size
    s = scale / np.sqrt(H)
    W, R, B = rng.uniform(-s, s, (D, G * H, I)), rng.uniform(-s, s, (D, G * H, H)), rng.uniform(-s, s, (D, 2 * G * H))
    X = rng.standard_normal((T, batch, I)) * 2
    h0 = rng.standard_normal((D, batch, H)) if spec.initial_h else None
    c0 = rng.standard_normal((D, batch, H)) if spec.initial_c else None
    P = rng.uniform(-1, 1, (D, 3 * H)) if spec.peepholes else None
    lens = None
    if spec.seq_lens:  # one full row, one of the shortest, the others anywhere between
        state = spec.initial_h or spec.initial_c  # the operator page leaves an empty sequence's state undefined
        lens = rng.integers(1 if state else 0, T + 1, batch).astype(np.int32)
        lens[0], lens[-1] = T, 1 if state else 0
    return X, W, R, B, h0, c0, P, lens


def _compile(func):
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(host_target()))


CASES = [
    # cell, I, H, directions, extra spec fields, T, batch; serial_below=0: the parallel step always,
    # 1 << 30: the serial one always (the default picks by batch x step size at run time)
    ("lstm", 7, 16, ("forward",), dict(yc_layout="dbh", serial_below=0), 6, 5),  # a 4-row tile + 1
    ("lstm", 5, 20, ("forward", "reverse"), dict(x_layout="bti", y_layout="tbdh", yh_layout="bdh"), 4, 3),
    ("lstm", 6, 12, ("reverse",), dict(initial_h=True, initial_c=True, clip=0.7, yc_layout="bd_h", y_layout="btd_h",
                                       serial_below=0, batch_tile=2), 5, 2),
    ("gru", 9, 33, ("forward", "reverse"), dict(y_layout="btdh", serial_below=0), 7, 6),
    ("gru", 4, 16, ("reverse",), dict(initial_h=True, batch_tile=2, serial_below=1 << 30), 1, 3),
    ("rnn", 8, 17, ("forward", "reverse"), dict(activations=("Relu", "Relu"), serial_below=0, batch_tile=6), 5, 7),
    ("rnn", 8, 16, ("forward",), dict(gemm_rows=3, batch_tile=1, serial_below=1 << 30), 9, 2),
    ("lstm", 4, 16, ("forward",), dict(activations=("Sigmoid", "Relu", "Tanh"), batch_tile=1), 3, 1),
    ("lstm", 3, 18, ("forward", "reverse"), dict(peepholes=True, initial_c=True, yc_layout="dbh", serial_below=0,
                                                 batch_tile=2), 4, 2),
    ("gru", 5, 20, ("forward", "reverse"), dict(linear_before_reset=False, initial_h=True, serial_below=0,
                                                batch_tile=2), 5, 6),
    ("gru", 5, 16, ("reverse",), dict(linear_before_reset=False, clip=0.9, serial_below=1 << 30), 4, 3),
    ("lstm", 4, 20, ("forward", "reverse"), dict(seq_lens=True, initial_h=True, yc_layout="dbh", serial_below=0,
                                                 batch_tile=3), 6, 7),
    ("gru", 4, 16, ("reverse",), dict(seq_lens=True, linear_before_reset=False, y_layout="btdh", batch_tile=2), 5, 4),
    ("rnn", 4, 16, ("forward",), dict(seq_lens=True, batch_tile=2, serial_below=1 << 30), 5, 3),
    # the default tiles (6 x 6); a GEMM tile of one row (every row a leftover item)
    ("gru", 6, 16, ("forward", "reverse"), dict(serial_below=0, batch_tile=6, gemm_rows=6), 3, 8),
    ("lstm", 6, 16, ("reverse",), dict(gemm_rows=1, serial_below=0, y_layout="btdh"), 3, 5),
]


@pytest.mark.parametrize("cell,I,H,dirs,extra,T,batch", CASES)
def test_layer_matches_the_reference(cell, I, H, dirs, extra, T, batch):
    spec = LayerSpec(cell, I, H, dirs, **{"batch_tile": 4, "gemm_rows": 4, **extra})  # the cases' own tiles
    X, W, R, B, h0, c0, P, lens = _inputs(spec, T, batch, np.random.default_rng(0))
    values = {"X": X.transpose(1, 0, 2) if spec.x_layout == "bti" else X, "H0": h0, "C0": c0, "Lens": lens,
              **kernels.pack(spec, W, R, B, P)}
    got = call(_compile(kernels.layer_primfunc(spec)), spec, "llvm", values, T, batch)
    want = in_layouts(spec, *onnx_reference(spec, X, W, R, B, h0, c0, P, lens))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert_close(g, w)


def test_one_kernel_serves_every_batch_and_length():
    """Batch and T are symbolic: the same compiled function runs shapes it never saw."""
    spec = LayerSpec("lstm", 6, 16, ("forward", "reverse"), yc_layout="dbh")
    rng = np.random.default_rng(3)
    W, R, B = rng.uniform(-.3, .3, (2, 64, 6)), rng.uniform(-.3, .3, (2, 64, 16)), rng.uniform(-.3, .3, (2, 128))
    lib = _compile(kernels.layer_primfunc(spec))
    packed = kernels.pack(spec, W, R, B)
    for T, batch in ((1, 1), (37, 3), (2, 9)):
        X = rng.standard_normal((T, batch, 6))
        for got, want in zip(call(lib, spec, "llvm", {"X": X, **packed}, T, batch), onnx_reference(spec, X, W, R, B)):
            assert_close(got, want)


def test_source_is_flat_in_T():
    """The time loop is a loop: the generated code does not mention any sequence length."""
    src = kernels.layer_source(LayerSpec("gru", 8, 32, ("forward",)))
    assert "for t in T.serial(seq)" in src and "pragma_parallel_launch_point" in src


@pytest.mark.parametrize("act,n,rows", [(None, 16, 4), ("Sigmoid", 5, 4), ("LeakyRelu", 21, 4), ("Tanh", 3, 4),
                                        ("Relu", 40, 1), (None, 48, 6),
                                        # in two parts (`gemm.column_parts`): 4-block panels, then the rest
                                        (None, 80, 6), ("Sigmoid", 100, 3), ("Relu", 145, 2), ("Tanh", 319, 5)])
def test_dense_matches_float64(act, n, rows):
    rng = np.random.default_rng(1)
    spec = DenseSpec(11, n, act, 0.01, rows)
    w, b = rng.standard_normal((11, n)), rng.standard_normal(n)
    x = rng.standard_normal((7, 11))
    lib = _compile(dense.dense_primfunc(spec))
    wp, bp = dense.pack_dense(spec, w, b)
    dev = [tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in (x, wp, bp, np.zeros((7, n)))]
    lib["main"](*dev)
    z = x @ w + b
    want = {None: z, "Sigmoid": 1 / (1 + np.exp(-z)), "Tanh": np.tanh(z), "LeakyRelu": np.where(z < 0, 0.01 * z, z),
            "Relu": np.maximum(z, 0)}[act]
    assert_close(dev[3].numpy(), want)


def test_packing_keeps_padding_zero():
    spec = LayerSpec("gru", 3, 20, ("forward",))
    rng = np.random.default_rng(0)
    w, r, b = rng.standard_normal((1, 60, 3)), rng.standard_normal((1, 60, 20)), rng.standard_normal((1, 120))
    p = kernels.pack(spec, w, r, b)
    assert p["W"].shape == (1, 6, 3, 16) and p["R"].shape == (1, 2, 32, 3, 16)
    assert not p["R"][:, :, 20:].any()  # padded rows of R: padded units never feed real ones
    assert not p["R"][0, 1, :, :, 4:].any() and not p["Bias"][0].reshape(2, 3, 16)[1, :, 4:].any()


def test_signature_is_what_both_kernels_declare():
    """One parameter list for the CPU kernel, the CUDA kernel and the lowering's call."""
    spec = LayerSpec("lstm", 5, 20, ("forward", "reverse"), initial_h=True, initial_c=True, peepholes=True,
                     y_layout="btdh", yc_layout="bd_h")
    for target, module in (("llvm", kernels), ("cuda", cuda)):
        func = module.layer_primfunc(spec)
        declared = [(v.name, [getattr(s, "value", getattr(s, "name", None)) for s in v.shape]) for v in func.params]
        assert declared == [(p.name, list(p.shape)) for p in signature(spec, target)], target
    assert [p.name for p in signature(spec, "llvm")] == ["X", "W", "R", "Bias", "H0", "C0", "P", "Y", "Yh", "Yc"]
    with pytest.raises(ValueError, match="sequence_lens"):
        signature(LayerSpec("rnn", 4, 16, seq_lens=True), "cuda")


@pytest.mark.parametrize("cell,dirs,extra", [
    ("lstm", ("forward", "reverse"), dict(y_layout="btdh", yc_layout="dbh", initial_h=True, peepholes=True)),
    ("gru", ("reverse",), dict(x_layout="bti", yh_layout="bdh", clip=0.8)),
    ("rnn", ("forward",), dict(activations=("Relu",), y_layout="tbdh")),
    ("gru", ("forward", "reverse"), dict(linear_before_reset=False, y_layout="tdbh", initial_h=True)),
    ("lstm", ("reverse",), dict(initial_c=True, clip=0.5, y_layout="btd_h", yh_layout="bd_h", yc_layout="bdh")),
])
def test_cuda_kernel_logic_on_cpu(cell, dirs, extra):
    """No GPU here: the CUDA layer's TIR with its thread bindings made serial loops runs on the CPU,
    which checks its indexing and cell arithmetic against float64 (not its speed, nor CUDA itself)."""
    spec = LayerSpec(cell, 5, 130, dirs, **extra)  # 130 units: two thread blocks, the second partial
    src = cuda.layer_source(spec, "main")
    src = src.replace('"tirx.is_scheduled": True', "").replace(', scope="local"', "")
    src = re.sub(r'T\.thread_binding\(([^,]+), thread="[a-zA-Z.]+"\)', r"T.serial(\1)", src)
    T_, batch = 4, 3
    X, W, R, B, h0, c0, P, _ = _inputs(spec, T_, batch, np.random.default_rng(4), scale=1.2)
    values = {"X": X.transpose(1, 0, 2) if spec.x_layout == "bti" else X, "H0": h0, "C0": c0,
              **cuda.pack(spec, W, R, B, P)}
    got = call(_compile(tvm.script.from_source(src)), spec, "cuda", values, T_, batch)
    for g, w in zip(got, in_layouts(spec, *onnx_reference(spec, X, W, R, B, h0, c0, P))):
        assert_close(g, w)


def test_reversed_item_order_changes_no_bit():
    """`chunks` only reorders a step's work items (reversed within chunks on odd steps): the outputs
    are the in-order kernel's, bit for bit, also where the chunks do not divide the items."""
    spec = LayerSpec("lstm", 12, 40, ("forward", "reverse"), batch_tile=2, gemm_rows=4)
    X, W, R, B, *_ = _inputs(spec, 5, 7, np.random.default_rng(4))
    values = {"X": X, **kernels.pack(spec, W, R, B)}
    outs = [call(tvm.compile(tvm.IRModule({"main": kernels.layer_primfunc(s)}), target="llvm"), s, "llvm", values, 5, 7)
            for s in (spec, dataclasses.replace(spec, chunks=3))]
    assert "t % 2 == 1" in kernels.layer_source(dataclasses.replace(spec, chunks=3))
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_step_chunks_follow_the_share_of_r_in_l2():
    from rnnc.compiler.tvm.target import cpu_count, step_chunks
    from rnnc.host import caches

    assert step_chunks(1 << 10) == 0  # a small R stays in L2 in any order
    if cpu_count() > 1 and caches().source != "fallback":
        assert step_chunks(cpu_count() * caches().l2_bytes) == cpu_count()
