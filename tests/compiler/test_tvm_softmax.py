"""The softmax kernel (`softmax`) against float64, and the frontend taking it for Softmax nodes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm
from rnnc.compiler.tvm import lower
from rnnc.compiler.tvm.softmax import softmax_primfunc, softmax_source
from rnnc.compiler.tvm.target import host_target

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("n", [5, 16, 37, 1000])
def test_softmax_rows_match_float64(n):
    lib = tvm.compile(tvm.IRModule({"main": softmax_primfunc(n)}), target=tvm.target.Target(host_target()))
    x = (np.random.default_rng(n).standard_normal((7, n)) * 8).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    want = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    assert np.abs(y.numpy() - want).max() / np.abs(want).max() < 1e-5
    assert np.allclose(y.numpy().sum(1), 1, atol=1e-5)


def _model(axis: int, shape: list) -> onnx.ModelProto:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=axis)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_frontend_takes_the_last_axis_and_leaves_the_others_to_upstream():
    last = lower.lower(_model(-1, ["b", 3, 11]), "llvm")
    assert [layer["softmax"] for layer in last.layers if "softmax" in layer] == [11]
    other = lower.lower(_model(1, ["b", 3, 11]), "llvm")
    assert not any("softmax" in layer for layer in other.layers)
    ex = tvm.compile(last.module, tvm.target.Target(host_target()))
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(0).standard_normal((2, 3, 11)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = np.exp(x - x.max(-1, keepdims=True))
    assert np.allclose(got, want / want.sum(-1, keepdims=True), atol=1e-6)
    assert "T.parallel(rows)" in softmax_source(11)
