"""Tiny ONNX models for the bench tests, written by hand so that no torch is needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES, HIDDEN = 3, 5


def stateful_lstm(tmp_path: Path, name: str = "lstm_stream") -> Path:
    """An ONNX LSTM that streams: inputs x [seq, batch, 3], h0 and c0 [1, batch, 5]; outputs
    y [seq, 1, batch, 5], hn and cn [1, batch, 5]. rnnc pairs h0->hn and c0->cn by name."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.5, 0.5, (1, 4 * HIDDEN, FEATURES)).astype(np.float32)
    r = rng.uniform(-0.5, 0.5, (1, 4 * HIDDEN, HIDDEN)).astype(np.float32)
    b = rng.uniform(-0.2, 0.2, (1, 8 * HIDDEN)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))]
    state = [1, "batch", HIDDEN]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", FEATURES]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, state),
              helper.make_tensor_value_info("c0", TensorProto.FLOAT, state)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 1, "batch", HIDDEN]),
               helper.make_tensor_value_info("hn", TensorProto.FLOAT, state),
               helper.make_tensor_value_info("cn", TensorProto.FLOAT, state)]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "hn", "cn"], hidden_size=HIDDEN)
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], name, inputs, outputs, inits),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def stateless(tmp_path: Path) -> Path:
    """y = tanh(x), x [batch, seq, 3]: nothing to carry between calls."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", FEATURES])
    path = tmp_path / "stateless.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Tanh", ["x"], ["y"])], "stateless", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


SHAPES = {"x": (3, 2, FEATURES), "h0": (1, 2, HIDDEN), "c0": (1, 2, HIDDEN)}  # seq 3, batch 2
