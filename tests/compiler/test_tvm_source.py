"""The generated TIR is pinned: a refactor of the generators must leave these PrimFuncs structurally equal.

Each hash is TVM's `structural_hash` of the parsed PrimFunc (names of buffers and variables do not
count, statements, indices and constants do). The values were taken from the generators before
they moved to the shared emitter (`emit`), signature (`spec.signature`) and GEMM (`gemm`), and the
new code reproduces them. A deliberate change of the generated code updates the value here, and
says why in its commit.
"""
from __future__ import annotations

import pytest
import tvm  # noqa: F401 - a hard dependency of rnnc: never skipped
import tvm.script
import tvm_ffi

from rnnc.compiler.tvm import cuda, dense, kernels
from rnnc.compiler.tvm.dense import DenseSpec
from rnnc.compiler.tvm.spec import LayerSpec

pytestmark = pytest.mark.tvm

FB, FWD, REV = ("forward", "reverse"), ("forward",), ("reverse",)

LAYERS = [  # (target, spec, structural hash)
    ("llvm", LayerSpec("lstm", 5, 20, FB, x_layout="bti", y_layout="tbdh", yh_layout="bdh", batch_tile=4, gemm_rows=4),
     0xa4f6412d5be13954),
    ("llvm", LayerSpec("lstm", 6, 12, REV, initial_h=True, initial_c=True, clip=0.7, yc_layout="bd_h", y_layout="btd_h",
                       serial_below=0, batch_tile=2, gemm_rows=4), 0xc29ef430c63f6b0f),
    ("llvm", LayerSpec("gru", 9, 33, FB, y_layout="btdh", serial_below=0, batch_tile=4, gemm_rows=4),
     0x42cd5a64323ac36a),
    ("llvm", LayerSpec("rnn", 8, 17, FB, activations=("Relu", "Relu"), serial_below=0, batch_tile=6, gemm_rows=4),
     0x3559ed984e678cb3),
    ("llvm", LayerSpec("lstm", 3, 18, FB, peepholes=True, initial_c=True, yc_layout="dbh", serial_below=0, batch_tile=2,
                       gemm_rows=4), 0x27952d27656910ac),
    ("llvm", LayerSpec("gru", 5, 20, FB, linear_before_reset=False, initial_h=True, serial_below=0, batch_tile=2,
                       gemm_rows=4), 0x6f3b0b61203686a8),
    ("llvm", LayerSpec("lstm", 4, 20, FB, seq_lens=True, initial_h=True, yc_layout="dbh", serial_below=0, batch_tile=3,
                       gemm_rows=4), 0x5ca183fe3d974329),
    ("llvm", LayerSpec("lstm", 10, 20, FB, y_layout="tdbh", seq_lens=True, peepholes=True, initial_c=True,
                       yh_layout="bd_h", yc_layout="bdh", batch_tile=5, gemm_rows=6), 0x6eaac63abf9311e8),
    ("llvm", LayerSpec("rnn", 3, 20, REV, clip=2.5, y_layout="btd_h", yh_layout="bd_h", seq_lens=True, batch_tile=4,
                       gemm_rows=2), 0x4389fbb683c71d13),
    ("cuda", LayerSpec("lstm", 5, 130, FB, y_layout="btdh", yc_layout="dbh", initial_h=True, peepholes=True),
     0x7692461b3ca8fb1e),
    ("cuda", LayerSpec("gru", 5, 130, REV, x_layout="bti", yh_layout="bdh", clip=0.8), 0xe9c97286e2c1f181),
    ("cuda", LayerSpec("rnn", 5, 130, FWD, activations=("Relu",), y_layout="tbdh"), 0xd126242e7c11ba67),
    ("cuda", LayerSpec("gru", 5, 130, FB, linear_before_reset=False, y_layout="tdbh", initial_h=True),
     0xb48d1d332ab8401c),
]
DENSE = [
    (DenseSpec(11, 5, "Sigmoid", 0.01, rows=4), 0xaa8d0b2c188e01b3),
    (DenseSpec(11, 21, "LeakyRelu", 0.01, rows=4), 0x3f36ce8303ef5448),
    (DenseSpec(7, 40, "LeakyRelu", 0.2, rows=3), 0xc4dd21bc0163c932),
]


def _hash(source: str) -> int:
    return tvm_ffi.structural_hash(tvm.script.from_source(source))


@pytest.mark.parametrize("target,spec,want", LAYERS)
def test_layer_tir_is_unchanged(target, spec, want):
    source = kernels.layer_source(spec) if target == "llvm" else cuda.layer_source(spec)
    assert _hash(source) == want, f"the generated {target} TIR of {spec} changed"


@pytest.mark.parametrize("spec,want", DENSE)
def test_dense_tir_is_unchanged(spec, want):
    assert _hash(dense.dense_source(spec)) == want, f"the generated TIR of {spec} changed"
