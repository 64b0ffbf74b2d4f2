"""The layer kernels with W and R below float32 (`quant`: bf16, int8 on VNNI and its fallback)
against float64, and the packing they read.

Errors are normwise (max |y - ref| / max |ref|), bounded well below the verify tolerances (bf16
2e-2, int8 6e-2): a wrong kernel is off by O(1), a right one by the weights' (and activations')
rounding. Measured here: bf16 2-3.5e-3, int8 3-9e-3.
"""
from __future__ import annotations

import numpy as np
import pytest

from rnnc.compiler.tvm import kernels, quant
from rnnc.compiler.tvm.spec import LayerSpec, signature
from rnnc.compiler.tvm.target import configure_threads, cpu_count, cpu_flags, host_target, llvm_features
from tests.compiler.test_tvm_kernels import _compile, _inputs, call, in_layouts, onnx_reference

pytestmark = pytest.mark.tvm


@pytest.fixture(autouse=True, scope="module")
def _threads():
    configure_threads(cpu_count())  # the parallel steps, their barriers and the quantization phases

BOUND = {"bf16": 5e-3, "int8": 2e-2}
HAS_VNNI = "avx512vnni" in llvm_features(host_target()) and "avx512vnni" in (cpu_flags() or set())
PATHS = [("bf16", False), pytest.param("int8", True, marks=pytest.mark.skipif(not HAS_VNNI, reason="no AVX512-VNNI")),
         ("int8", False)]

CASES = [  # cell, I, H (not a multiple of 16 in most), directions, extra, T, batch
    ("lstm", 7, 20, ("forward", "reverse"), dict(initial_h=True, initial_c=True, yc_layout="dbh", serial_below=0), 4, 5),
    ("lstm", 6, 16, ("forward",), dict(serial_below=1 << 30, y_layout="btdh"), 5, 1),
    ("gru", 9, 18, ("forward", "reverse"), dict(serial_below=0), 5, 1),  # linear_before_reset = 1
    ("gru", 5, 20, ("reverse",), dict(linear_before_reset=False, initial_h=True, serial_below=0), 4, 3),
    ("rnn", 8, 17, ("forward",), dict(serial_below=0, x_layout="bti"), 5, 3),
    ("rnn", 8, 16, ("forward", "reverse"), dict(activations=("Relu", "Relu"), initial_h=True), 4, 1),
]


def layer_errors(spec: LayerSpec, T: int, batch: int, build) -> list[float]:
    """Normwise error of each output of the layer kernel `build` compiles, against ONNX's float64."""
    X, W, R, B, h0, c0, P, lens = _inputs(spec, T, batch, np.random.default_rng(1))
    values = {"X": X.transpose(1, 0, 2) if spec.x_layout == "bti" else X, "H0": h0, "C0": c0,
              **kernels.pack(spec, W, R, B, P)}
    got = call(build(kernels.layer_primfunc(spec)), spec, "llvm", values, T, batch)
    want = in_layouts(spec, *onnx_reference(spec, X, W, R, B, h0, c0, P, lens))
    return [float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want)]


@pytest.mark.parametrize("precision,vnni", PATHS)
@pytest.mark.parametrize("cell,I,H,dirs,extra,T,batch", CASES)
def test_layer_below_fp32_matches_float64(precision, vnni, cell, I, H, dirs, extra, T, batch):
    spec = LayerSpec(cell, I, H, dirs, precision=precision, vnni=vnni, batch_tile=2, gemm_rows=4, **extra)
    errors = layer_errors(spec, T, batch, _compile)
    print(f"{precision}{' vnni' if vnni else ''} {cell} {dirs}: {['%.2e' % e for e in errors]}")
    assert max(errors) < BOUND[precision], errors
    assert max(errors) > 1e-5  # the weights really are below float32


def test_bf16_rounds_to_nearest_even():
    a = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 3.1415926], np.float32)
    back = quant.from_bf16(quant.to_bf16(a))
    assert back[0] == 1.0 and back[1] == 1.0 and back[2] == 1 + 2 ** -6 and back[3] == -2.5
    assert abs(back[4] - 3.1415926) < 2 ** -7 * 3.2


def test_int8_vnni_layout_is_the_fallback_layout_in_k_groups():
    """The VNNI packing holds the same int8 values as the widened one, 16 columns x 4 k per 64 bytes."""
    spec = LayerSpec("gru", 7, 20, ("forward",), precision="int8")
    rng = np.random.default_rng(0)
    w, r, b = rng.standard_normal((1, 60, 7)), rng.standard_normal((1, 60, 20)), rng.standard_normal((1, 120))
    flat = kernels.pack(spec, w, r, b)
    vnni = kernels.pack(LayerSpec("gru", 7, 20, ("forward",), precision="int8", vnni=True), w, r, b)
    assert vnni["W"].shape == (1, 6, 2, 64) and vnni["R"].shape == (1, 2, 8, 3, 64)
    wk = vnni["W"].reshape(1, 6, 2, 16, 4).transpose(0, 1, 2, 4, 3).reshape(1, 6, 8, 16)
    assert (wk[:, :, :7] == flat["W"]).all() and not wk[:, :, 7:].any()  # K padded to 8 with zeros
    rk = vnni["R"].reshape(1, 2, 8, 3, 16, 4).transpose(0, 1, 2, 5, 3, 4).reshape(1, 2, 32, 3, 16)
    assert (rk == flat["R"]).all()
    assert (vnni["Rsum"] == flat["R"].astype(np.int32).sum(axis=2).reshape(1, -1)).all()
    assert np.allclose(flat["Rs"], vnni["Rs"]) and np.abs(flat["R"]).max() == 127
    # dequantized, each gate row is the float one to within half a step of its own scale
    deq = flat["R"].astype(np.float64) * flat["Rs"].reshape(1, 2, 1, 3, 16)
    ref = kernels.pack(LayerSpec("gru", 7, 20, ("forward",)), w, r, b)["R"]
    assert np.all(np.abs(deq - ref) <= flat["Rs"].reshape(1, 2, 1, 3, 16) * 0.5 + 1e-6)


def test_signature_by_precision():
    names = [p.name for p in signature(LayerSpec("lstm", 5, 20, precision="int8", vnni=True), "llvm")]
    assert names[:8] == ["X", "W", "R", "Bias", "Ws", "Rs", "Wsum", "Rsum"]
    dtypes = {p.name: p.dtype for p in signature(LayerSpec("lstm", 5, 20, precision="bf16"), "llvm")}
    assert dtypes["W"] == dtypes["R"] == "uint16" and dtypes["X"] == "float32"
    with pytest.raises(ValueError, match="CPU"):
        signature(LayerSpec("lstm", 5, 20, precision="int8"), "cuda")


@pytest.mark.skipif(not HAS_VNNI, reason="no AVX512-VNNI")
def test_vnni_source_is_readable():
    src = kernels.layer_source(LayerSpec("lstm", 8, 32, precision="int8", vnni=True))
    assert "llvm.x86.avx512.vpdpbusd.512" in src and "Hq[cur, d, b0" in src and "Xr[m" in src
    assert "vpdpbusd" not in kernels.layer_source(LayerSpec("lstm", 8, 32, precision="int8"))
