"""Export the reference module to ONNX with ONNX's own LSTM/GRU/RNN nodes.

Written with onnx.helper rather than torch.onnx so that the graph is exactly the one we mean:
one recurrent node per layer (both directions in one node), batch and sequence axes symbolic,
gate order converted from PyTorch's to ONNX's, and GRU with `linear_before_reset=1`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
    """The ONNX graph of `model`, float32, input `tokens` or `features`, output `output` (and, by mode,
    `generated`, `h0`/`c0` in and `h_n`/`c_n` out). A generative mode's steps are one ONNX `Loop`."""
    b = _Builder()
    rnn = spec.rnn
    weights = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    lstm = rnn.cell == "lstm"
    feature_dims = ["batch"] if spec.mode == "one_to_many" else ["batch", "seq"]
    if spec.input.type == "tokens":
        inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, feature_dims)]
    else:
        inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, feature_dims + [spec.input.features])]
    state_dims = [rnn.num_layers, "batch", rnn.hidden_size]
    if rnn.state:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_dims) for n in ("h0", "c0")[: 1 + lstm]]
    outputs = []
    if spec.generative:
        probs, tokens, finals = (_generator if spec.mode == "one_to_many" else _translator)(b, spec, weights)
        units = spec.output.dense.units if spec.mode == "one_to_many" else spec.decoder.vocab_size
        b.nodes.append(helper.make_node("Identity", [probs], ["output"], name="output"))
        outputs.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", spec.steps, units]))
        if tokens:
            b.nodes.append(helper.make_node("Identity", [tokens], ["generated"], name="generated"))
            outputs.append(helper.make_tensor_value_info("generated", TensorProto.INT64, ["batch", spec.steps]))
    else:
        x = _embedded(b, spec, weights)
        states = ("h0", "c0" if lstm else "") if rnn.state else ("", "")
        y, y_h, y_c, finals = _stack(b, "", rnn, weights, "rnn", x, *states)
        out = _steps_or_last(b, spec, y, y_h)
        dense = spec.output.dense
        if dense:
            out = _dense(b, weights, out, dense.activation)
        b.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
        width = dense.units if dense else rnn.hidden_size * rnn.directions
        dims = ["batch", "seq", width] if spec.output.mode == "many_to_many" else ["batch", width]
        outputs.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, dims))
    if rnn.state:
        for value, name in zip(finals, ("h_n", "c_n")[: 1 + lstm]):
            b.nodes.append(helper.make_node("Identity", [value], [name], name=name))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state_dims))
    graph = helper.make_graph(b.nodes, spec.name, inputs, outputs, initializer=b.initializers)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnc", ir_version=IR_VERSION
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _embedded(b: _Builder, spec: ModelSpec, weights: dict[str, np.ndarray]) -> str:
    """The input as the first layer reads it, time-major: [T, B, I]."""
    if spec.input.type == "tokens":
        table = b.const("embedding.weight", weights["embedding.weight"])
        x = b.node("Gather", [table, "tokens"], "embedding", axis=0)
    else:
        x = "features"
    return b.node("Transpose", [x], "to_time_major", perm=[1, 0, 2])


def _stack(b: _Builder, scope: str, rnn: Any, weights: dict[str, np.ndarray], prefix: str, x: str,
           h0: str = "", c0: str = "") -> tuple[str, str, str, list[str]]:
    """One recurrent node per layer from x [T, B, I]: the top layer's Y [T, D, B, H], Y_h and Y_c
    [D, B, H], and the final states of every layer stacked [L*D, B, H] (h, and c for an LSTM).
    `h0`/`c0` name [L, B, H] initial states (empty: zeros); `scope` prefixes node names (a Loop body)."""
    d, hidden, lstm = rnn.directions, rnn.hidden_size, rnn.cell == "lstm"
    y = y_h = y_c = ""
    finals: list[list[str]] = [[], []]
    for layer in range(rnn.num_layers):
        w, r, bias = _layer_weights(weights, prefix, rnn.cell, layer, d, hidden, rnn.bias is not False)
        name = f"{prefix}.l{layer}" if prefix != "rnn" else f"l{layer}"
        inputs = [x, b.const(f"{name}.W", w), b.const(f"{name}.R", r), b.const(f"{name}.B", bias) if bias is not None else ""]
        if h0 or c0:
            inputs.append("")  # sequence_lens
            for given in (h0, c0) if lstm else (h0,):  # one layer: [1, B, H] is ONNX's initial state as it is
                inputs.append("" if not given else given if rnn.num_layers == 1 else _layer_slice(b, scope, given, layer))
        while inputs and not inputs[-1]:
            inputs.pop()
        attrs: dict = dict(hidden_size=hidden, direction="bidirectional" if d == 2 else "forward")
        if rnn.cell == "gru":
            attrs["linear_before_reset"] = 1
        if rnn.cell == "rnn":
            attrs["activations"] = [rnn.activation.capitalize()] * d
        outs = [f"{scope}{name}.Y", f"{scope}{name}.Y_h"] + ([f"{scope}{name}.Y_c"] if lstm else [])
        b.nodes.append(helper.make_node(_OP[rnn.cell], inputs, outs, name=f"{scope}{name}.{rnn.cell}", **attrs))
        y, y_h = outs[0], outs[1]
        y_c = outs[2] if lstm else ""
        finals[0].append(y_h)
        if lstm:
            finals[1].append(y_c)
        if layer + 1 < rnn.num_layers:  # [T, D, B, H] -> [T, B, D*H]
            t = b.node("Transpose", [y], f"{scope}{name}.merge_directions", perm=[0, 2, 1, 3])
            x = b.node("Reshape", [t, b.shape("keep2", [0, 0, -1])], f"{scope}{name}.to_next")
    stacked = [f[0] if len(f) == 1 else b.node("Concat", f, f"{scope}{prefix}.{kind}_n", axis=0)
               for f, kind in zip(finals, "hc") if f]
    return y, y_h, y_c, stacked


def _layer_slice(b: _Builder, scope: str, state: str, layer: int) -> str:
    """Layer `layer`'s [1, B, H] of a stacked state [L, B, H]."""
    starts, ends, axes = b.ints(f"l{layer}", [layer]), b.ints(f"l{layer + 1}", [layer + 1]), b.ints("axis0", [0])
    return b.node("Slice", [state, starts, ends, axes], f"{scope}{state}.l{layer}")


def _steps_or_last(b: _Builder, spec: ModelSpec, y: str, y_h: str) -> str:
    if spec.output.mode == "many_to_many":  # [T, D, B, H] -> [B, T, D*H]
        t = b.node("Transpose", [y], "to_batch_major", perm=[2, 0, 1, 3])
        return b.node("Reshape", [t, b.shape("keep2", [0, 0, -1])], "steps")
    return _batch_major(b, "top_h", y_h)  # h_n of the top layer: [D, B, H] -> [B, D*H]


def _batch_major(b: _Builder, name: str, state: str) -> str:
    t = b.node("Transpose", [state], f"{name}_batch_major", perm=[1, 0, 2])
    return b.node("Reshape", [t, b.shape("keep1", [0, -1])], name)


def _dense(b: _Builder, weights: dict[str, np.ndarray], x: str, activation: str, prefix: str = "dense",
           scope: str = "") -> str:
    weight = b.const(f"{prefix}.weight_t", weights[f"{prefix}.weight"].T)
    out = b.node("MatMul", [x, weight], f"{scope}{prefix}.matmul")
    out = b.node("Add", [out, b.const(f"{prefix}.bias", weights[f"{prefix}.bias"])], f"{scope}{prefix}.add")
    if activation != "none":
        attrs = {"axis": -1} if activation == "softmax" else {}
        if activation == "leaky_relu":
            attrs = {"alpha": 0.01}
        out = b.node(_HEAD[activation], [out], f"{scope}{prefix}.{activation}", **attrs)
    return out


def _generator(b: _Builder, spec: ModelSpec, weights: dict[str, np.ndarray]) -> tuple[str, str, list[str]]:
    """one_to_many: the steps as a Loop carrying (input, h, c); returns probabilities [B, S, units],
    tokens [B, S] ("" for features) and the final states."""
    rnn = spec.rnn
    first = "tokens" if spec.input.type == "tokens" else "features"
    zeros = _zero_state(b, first, rnn.num_layers, rnn.hidden_size)
    h0 = "h0" if rnn.state else zeros
    c0 = ("c0" if rnn.state else zeros) if rnn.cell == "lstm" else ""
    table = "embedding.weight" if spec.input.type == "tokens" else None
    dense = spec.output.dense
    return _loop(b, spec.steps, first, h0, c0, rnn, weights, "rnn", table, "dense", dense.activation,
                 spec.input.type == "tokens")


def _translator(b: _Builder, spec: ModelSpec, weights: dict[str, np.ndarray]) -> tuple[str, str, list[str]]:
    """encoder_decoder: the encoder over the whole input, then the decoder's Loop from its final state."""
    rnn, dec = spec.rnn, spec.decoder
    _, y_h, y_c, _ = _stack(b, "", rnn, weights, "rnn", _embedded(b, spec, weights))
    layers = b.ints("dec_layers", [dec.num_layers, 1, 1])

    def start(state: str, name: str) -> str:  # [D, B, H] -> [B, D*H] -> [L_dec, B, D*H]
        top = b.node("Unsqueeze", [_batch_major(b, f"enc.{name}", state), b.ints("axis0", [0])], f"enc.{name}.1")
        return b.node("Tile", [top, layers], f"dec.{name}0")

    h0 = start(y_h, "h")
    c0 = ""
    if dec.cell == "lstm":
        c0 = start(y_c, "c") if rnn.cell == "lstm" else b.node(
            "ConstantOfShape", [b.node("Shape", [h0], "dec.h0_shape")], "dec.c0",
            value=numpy_helper.from_array(np.zeros(1, np.float32)))
    inp = "tokens" if spec.input.type == "tokens" else "features"
    batch = b.node("Slice", [b.node("Shape", [inp], "enc.shape"), b.ints("zero1", [0]), b.ints("l1", [1]),
                             b.ints("axis0", [0])], "enc.batch")
    first = b.node("ConstantOfShape", [batch], "dec.start",
                   value=numpy_helper.from_array(np.array([dec.start_token], dtype=np.int64)))
    return _loop(b, dec.max_steps, first, h0, c0, dec, weights, "decoder", "dec_embedding.weight", "projection",
                 "softmax", True)


def _zero_state(b: _Builder, first: str, layers: int, hidden: int) -> str:
    """Zeros [L, B, H], B read from the first input's shape."""
    batch = b.node("Slice", [b.node("Shape", [first], "gen.shape"), b.ints("zero1", [0]), b.ints("l1", [1]),
                             b.ints("axis0", [0])], "gen.batch")
    dims = b.node("Concat", [b.ints("layers", [layers]), batch, b.ints("hidden", [hidden])], "gen.state_dims", axis=0)
    return b.node("ConstantOfShape", [dims], "gen.zeros", value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _loop(b: _Builder, steps: int, first: str, h0: str, c0: str, cell: Any, weights: dict[str, np.ndarray],
          prefix: str, table: str | None, head: str, activation: str, tokens: bool) -> tuple[str, str, list[str]]:
    """The generation Loop: `steps` iterations carrying (input, h, c); each embeds the input (a
    token id, with `table`) or takes it as it is (features), runs the cells from (h, c), applies the
    head, and feeds back its argmax (tokens) or its output (features). Returns probabilities [B, S,
    units], tokens [B, S] (or "") and the final (h, c)."""
    lstm = cell.cell == "lstm"
    body = _Builder(b)  # nodes of the body; its constants go to the outer graph (outer-scope reads)
    x = body.node("Gather", [b.const(table, weights[table]), "x_in"], "body.embed", axis=0) if table else "x_in"
    x = body.node("Unsqueeze", [x, b.ints("axis0", [0])], "body.x")  # one step, time-major [1, B, I]
    _, y_h, _, finals = _stack(body, "body.", cell, weights, prefix, x, "h_in", "c_in" if lstm else "")
    width = weights[f"{head}.weight"].shape[0]
    top = body.node("Squeeze", [y_h, b.ints("axis0", [0])], "body.top")  # [B, H]
    out = _dense(body, weights, top, activation, head, "body.")
    scans = [body.node("Identity", [out], "body.probs")]
    if tokens:
        token = body.node("ArgMax", [out], "body.token", axis=-1, keepdims=0)
        scans.append(body.node("Identity", [token], "body.token_out"))
        nxt = token
    else:
        nxt = out
    body.nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body.cond"))
    carried = [nxt, finals[0]] + ([finals[1]] if lstm else [])
    x_type = (TensorProto.INT64, ["batch"]) if tokens else (TensorProto.FLOAT, ["batch", width])
    state_type = [cell.num_layers, "batch", cell.hidden_size]
    graph = helper.make_graph(
        body.nodes, "generate",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", *x_type),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, state_type)]
        + ([helper.make_tensor_value_info("c_in", TensorProto.FLOAT, state_type)] if lstm else []),
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(carried[0], *x_type)]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_type) for n in carried[1:]]
        + [helper.make_tensor_value_info(scans[0], TensorProto.FLOAT, ["batch", width])]
        + [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch"]) for n in scans[1:]])
    trip = b.const_int("steps", np.array(steps, dtype=np.int64))
    cond = b.const_bool("true", np.array(True))
    names = ["gen.x_last", "gen.h_n"] + (["gen.c_n"] if lstm else []) + ["gen.probs"] + (["gen.tokens"] if tokens else [])
    b.nodes.append(helper.make_node("Loop", [trip, cond, first, h0] + ([c0] if lstm else []), names,
                                    name="generate", body=graph))
    probs = b.node("Transpose", ["gen.probs"], "gen.probs_batch_major", perm=[1, 0, 2])
    toks = b.node("Transpose", ["gen.tokens"], "gen.tokens_batch_major", perm=[1, 0]) if tokens else ""
    return probs, toks, names[1: 2 + lstm]


def _layer_weights(
    state: dict[str, np.ndarray], prefix: str, cell: str, layer: int, d: int, hidden: int, has_bias: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ONNX's W [D, G*H, I], R [D, G*H, H] and B [D, 2*G*H] from PyTorch's per-direction tensors."""
    order = _GATE_ORDER[cell]

    def gates(a: np.ndarray) -> np.ndarray:
        chunks = np.split(a, len(order), axis=0)
        return np.concatenate([chunks[i] for i in order], axis=0)

    ws, rs, bs = [], [], []
    for direction in range(d):
        sfx = f"l{layer}" + ("_reverse" if direction else "")
        ws.append(gates(state[f"{prefix}.weight_ih_{sfx}"]))
        rs.append(gates(state[f"{prefix}.weight_hh_{sfx}"]))
        if has_bias:
            bs.append(np.concatenate([gates(state[f"{prefix}.bias_ih_{sfx}"]), gates(state[f"{prefix}.bias_hh_{sfx}"])]))
    return np.stack(ws), np.stack(rs), (np.stack(bs) if has_bias else None)


class _Builder:
    """Collects nodes and initializers; names every value after the node that makes it. A builder
    made with `outer` (a Loop body) keeps its own nodes and puts its constants in the outer graph."""

    def __init__(self, outer: _Builder | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.root = outer.root if outer is not None else self
        self.initializers: list[onnx.TensorProto] = []
        self._names: dict[str, str] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        return self._init(name, numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))

    def const_int(self, name: str, value: np.ndarray) -> str:
        return self._init(name, numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))

    def const_bool(self, name: str, value: np.ndarray) -> str:
        return self._init(name, numpy_helper.from_array(np.asarray(value, dtype=bool), name))

    def shape(self, name: str, dims: list[int]) -> str:
        return self.ints(f"shape.{name}", dims)

    def ints(self, name: str, values: list[int]) -> str:
        """An int64 vector constant (shapes, axes, slice bounds), made once per name."""
        return self.const_int(name if name.startswith("shape.") else f"i64.{name}", np.array(values, np.int64))

    def _init(self, name: str, tensor: onnx.TensorProto) -> str:
        root = self.root
        if name not in root._names:
            root.initializers.append(tensor)
            root._names[name] = name
        return name

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
