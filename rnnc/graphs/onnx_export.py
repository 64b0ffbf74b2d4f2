"""Export the reference module to ONNX with ONNX's own LSTM/GRU/RNN nodes.

Written with onnx.helper rather than torch.onnx so that the graph is exactly the one we mean:
one recurrent node per layer (both directions in one node), batch and sequence axes symbolic,
gate order converted from PyTorch's to ONNX's, and GRU with `linear_before_reset=1`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnc.graphs.spec import ModelSpec
from rnnc.graphs.torch_model import RNNModel

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17, read by every runtime we target

# rows of PyTorch's stacked gate matrices, reordered into ONNX's gate order
_GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}  # ifgo->iofc, rzn->zrh
_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_HEAD = {"softmax": "Softmax", "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "leaky_relu": "LeakyRelu"}


def export_onnx(model: RNNModel, spec: ModelSpec) -> onnx.ModelProto:
    """The ONNX graph of `model`, float32, input `tokens` or `features`, output `output`."""
    b = _Builder()
    rnn = spec.rnn
    d, hidden = rnn.directions, rnn.hidden_size
    state = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}

    if spec.input.type == "tokens":
        inp = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])
        table = b.const("embedding.weight", state["embedding.weight"])
        x = b.node("Gather", [table, "tokens"], "embedding", axis=0)
    else:
        inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "seq", spec.input.features])
        x = "features"
    x = b.node("Transpose", [x], "to_time_major", perm=[1, 0, 2])  # [T, B, I]

    y = y_h = ""
    for layer in range(rnn.num_layers):
        w, r, bias = _layer_weights(state, rnn.cell, layer, d, hidden, rnn.bias is not False)
        inputs = [x, b.const(f"l{layer}.W", w), b.const(f"l{layer}.R", r)]
        if bias is not None:
            inputs.append(b.const(f"l{layer}.B", bias))
        attrs: dict = dict(hidden_size=hidden, direction="bidirectional" if d == 2 else "forward")
        if rnn.cell == "gru":
            attrs["linear_before_reset"] = 1
        if rnn.cell == "rnn":
            attrs["activations"] = [rnn.activation.capitalize()] * d
        outs = [f"l{layer}.Y", f"l{layer}.Y_h"] + ([f"l{layer}.Y_c"] if rnn.cell == "lstm" else [])
        b.nodes.append(helper.make_node(_OP[rnn.cell], inputs, outs, name=f"l{layer}.{rnn.cell}", **attrs))
        y, y_h = outs[0], outs[1]
        if layer + 1 < rnn.num_layers:  # [T, D, B, H] -> [T, B, D*H]
            t = b.node("Transpose", [y], f"l{layer}.merge_directions", perm=[0, 2, 1, 3])
            x = b.node("Reshape", [t, b.shape("keep2", [0, 0, -1])], f"l{layer}.to_next")

    if spec.output.mode == "many_to_many":  # [T, D, B, H] -> [B, T, D*H]
        t = b.node("Transpose", [y], "to_batch_major", perm=[2, 0, 1, 3])
        out = b.node("Reshape", [t, b.shape("keep2", [0, 0, -1])], "steps")
    else:  # h_n of the top layer: [D, B, H] -> [B, D*H]
        t = b.node("Transpose", [y_h], "h_n_batch_major", perm=[1, 0, 2])
        out = b.node("Reshape", [t, b.shape("keep1", [0, -1])], "h_n")

    dense = spec.output.dense
    if dense:
        weight = b.const("dense.weight_t", state["dense.weight"].T)
        out = b.node("MatMul", [out, weight], "dense.matmul")
        out = b.node("Add", [out, b.const("dense.bias", state["dense.bias"])], "dense.add")
        if dense.activation != "none":
            attrs = {"axis": -1} if dense.activation == "softmax" else {}
            if dense.activation == "leaky_relu":
                attrs = {"alpha": 0.01}
            out = b.node(_HEAD[dense.activation], [out], f"dense.{dense.activation}", **attrs)
    b.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))

    width = dense.units if dense else hidden * d
    dims = ["batch", "seq", width] if spec.output.mode == "many_to_many" else ["batch", width]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)
    graph = helper.make_graph(b.nodes, spec.name, [inp], [output], initializer=b.initializers)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnc", ir_version=IR_VERSION
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _layer_weights(
    state: dict[str, np.ndarray], cell: str, layer: int, d: int, hidden: int, has_bias: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ONNX's W [D, G*H, I], R [D, G*H, H] and B [D, 2*G*H] from PyTorch's per-direction tensors."""
    order = _GATE_ORDER[cell]

    def gates(a: np.ndarray) -> np.ndarray:
        chunks = np.split(a, len(order), axis=0)
        return np.concatenate([chunks[i] for i in order], axis=0)

    ws, rs, bs = [], [], []
    for direction in range(d):
        sfx = f"l{layer}" + ("_reverse" if direction else "")
        ws.append(gates(state[f"rnn.weight_ih_{sfx}"]))
        rs.append(gates(state[f"rnn.weight_hh_{sfx}"]))
        if has_bias:
            bs.append(np.concatenate([gates(state[f"rnn.bias_ih_{sfx}"]), gates(state[f"rnn.bias_hh_{sfx}"])]))
    return np.stack(ws), np.stack(rs), (np.stack(bs) if has_bias else None)


class _Builder:
    """Collects nodes and float32 initializers; names every value after the node that makes it."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._shapes: dict[str, str] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def shape(self, name: str, dims: list[int]) -> str:
        if name not in self._shapes:
            self.initializers.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), f"shape.{name}"))
            self._shapes[name] = f"shape.{name}"
        return self._shapes[name]

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Write `proto` to `path` atomically; an identical file already there is kept as it is."""
    data = proto.SerializeToString()
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
