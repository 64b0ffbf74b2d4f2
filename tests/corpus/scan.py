"""A GRU written as an ONNX Scan, built with onnx.helper: torch.onnx never emits Scan, yet other
exporters (tf2onnx, hand-written streaming graphs) do, with the recurrence as a one-step node in
the body and the weights read from the outer scope."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.corpus import _torch
from tests.corpus.case import Case, check_written

FEATURES, HIDDEN = 8, 16
_ZRH = [1, 0, 2]  # PyTorch stacks GRU gates r, z, n; ONNX z, r, h


def _onnx_gates(weight: torch.Tensor) -> np.ndarray:
    blocks = weight.detach().numpy().reshape(3, HIDDEN, -1)
    return blocks[_ZRH].reshape(3 * HIDDEN, -1)


def _model(gru: nn.GRU) -> onnx.ModelProto:
    f32 = TensorProto.FLOAT
    bias = np.concatenate([_onnx_gates(gru.bias_ih_l0[:, None]), _onnx_gates(gru.bias_hh_l0[:, None])])
    init = [numpy_helper.from_array(_onnx_gates(gru.weight_ih_l0)[None], "W"),
            numpy_helper.from_array(_onnx_gates(gru.weight_hh_l0)[None], "R"),
            numpy_helper.from_array(bias.reshape(1, -1), "B"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x_t", "axis0"], ["x_step"]),  # a sequence of one step
         helper.make_node("Unsqueeze", ["h_prev", "axis0"], ["h_init"]),
         helper.make_node("GRU", ["x_step", "W", "R", "B", "", "h_init"], ["y_step", "h_last"],
                          hidden_size=HIDDEN, linear_before_reset=1),  # PyTorch's GRU
         helper.make_node("Squeeze", ["h_last", "axis0"], ["h_next"]),
         helper.make_node("Identity", ["h_next"], ["y_t"])],
        "gru_step",
        [helper.make_tensor_value_info("h_prev", f32, ["batch", HIDDEN]),
         helper.make_tensor_value_info("x_t", f32, ["batch", FEATURES])],
        [helper.make_tensor_value_info("h_next", f32, ["batch", HIDDEN]),
         helper.make_tensor_value_info("y_t", f32, ["batch", HIDDEN])],
        value_info=[helper.make_tensor_value_info("x_step", f32, [1, "batch", FEATURES]),
                    helper.make_tensor_value_info("h_init", f32, [1, "batch", HIDDEN]),
                    helper.make_tensor_value_info("y_step", f32, [1, 1, "batch", HIDDEN]),
                    helper.make_tensor_value_info("h_last", f32, [1, "batch", HIDDEN])])
    scan = helper.make_node("Scan", ["h0", "features"], ["hn", "output"], name="gru_over_time", body=body,
                            num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1])
    graph = helper.make_graph(
        [scan], "scan_gru",
        [helper.make_tensor_value_info("features", f32, ["batch", "time", FEATURES]),
         helper.make_tensor_value_info("h0", f32, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("hn", f32, ["batch", HIDDEN]),
         helper.make_tensor_value_info("output", f32, ["batch", "time", HIDDEN])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _torch.OPSET)],
                              producer_name="rnnc-tests-corpus")
    model.ir_version = 8  # the IR version of opset 17
    return model


def build(out_dir: Path) -> Case:
    """features [batch, time, 8], h0 [batch, 16] float32 -> hn [batch, 16], output [batch, time, 16];
    the state pair h0->hn. The reference is torch's nn.GRU with the same weights."""
    gru = _torch.seeded(nn.GRU(FEATURES, HIDDEN, batch_first=True), seed=7)
    path = out_dir / "scan_gru.onnx"
    onnx.save(_model(gru), path)

    def reference(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            y, hn = gru(torch.from_numpy(inputs["features"]), torch.from_numpy(inputs["h0"])[None])
        return {"hn": hn[0].numpy(), "output": y.numpy()}

    return check_written(Case(
        path=path, shapes={"features": (2, 10, FEATURES), "h0": (2, HIDDEN)}, bind={}, state={"h0": "hn"},
        ops=frozenset({"Scan", "GRU", "Unsqueeze", "Squeeze"}), dtype="float32", reference=reference),
        where={"GRU": "Scan"})
