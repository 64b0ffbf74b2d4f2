"""The user's graph rewritten into the graph ONNX Runtime runs and TVM lowers, meaning kept.

Each rewrite, and why it exists:
- Symbolic dims that are the batch or the sequence axis are renamed `batch` and `seq`, so every
  artifact names its dynamic axes alike; any other symbolic input dim is fixed to its --shapes size,
  since artifacts are built for those sizes.
- `layout=1` (batch-major) recurrent nodes become `layout=0` nodes between Transposes of X,
  initial_h / initial_c and the outputs: ONNX Runtime 1.32 refuses batch-major recurrent nodes.
- A missing `hidden_size` is written from R's last dim: it is optional in ONNX, required by ORT.
- Activation alpha/beta are spelled out on nodes using Affine, ThresholdedRelu or ScaledTanh, where
  ORT's defaults (0) differ from the operators'; other nodes are left as the user wrote them.
- Constant nodes, and every node whose inputs are all constants, become initializers, and an `If`
  on a constant condition becomes its branch (`bind.fold_constants`; from IR 4 on, where
  initializers need not be graph inputs): exporters cast Python scalars and compute shapes of
  weights, and lowerings then read those as constants.
- All-zero initial states (exporters compute them from the batch size with Shape and
  ConstantOfShape) become omitted inputs, which the operators define as zeros: the state inputs a
  lowering sees are then constants or absent, never arithmetic on the batch size.
- Nodes whose outputs nobody reads, and initializers nothing reads, go: the rewrites above leave
  such chains behind.
- `value_info` is cleared, since the rewritten values' shapes changed; ORT infers them again.
The result passes the full ONNX check.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnc.graphs import reference
from rnnc.graphs.bind import drop_unused, fold_constants
from rnnc.graphs.onnx_shapes import RECURRENT
from rnnc.graphs.walk import subgraphs


def runnable_graph(proto: onnx.ModelProto, renames: dict[str, str], input_dims: dict[str, tuple]
                   ) -> onnx.ModelProto:
    """The user's graph with batch and sequence dims named `batch` and `seq`, other symbolic input
    dims fixed by --shapes, and the recurrent nodes put in a form ONNX Runtime 1.32 accepts:
    `layout=1` becomes `layout=0` between Transposes (ORT refuses batch-major recurrent nodes),
    activation alpha/beta are spelled out where ORT's defaults differ from the operators', and a
    missing `hidden_size` is written (ORT requires it). See `_simplify` and the module docstring
    for the rest."""
    out = fold_constants(proto) if proto.ir_version >= 4 else _copy(proto)
    graph = out.graph
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]
    for v in graph.input:
        if v.name in input_dims:
            shape = v.type.tensor_type.shape
            shape.ClearField("dim")
            for size in input_dims[v.name]:
                d = shape.dim.add()
                if isinstance(size, int):
                    d.dim_value = size
                else:
                    d.dim_param = size
    _simplify(out)
    _recurrent_forms(graph, {})
    graph.ClearField("value_info")  # shapes of rewritten values changed; ORT infers them again
    onnx.checker.check_model(out, full_check=True)
    return out


def _recurrent_forms(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> None:
    """Every recurrent node, subgraphs included, as ONNX Runtime takes it: layout 0 (between
    Transposes), activation parameters spelled out, and `hidden_size` written (optional in ONNX,
    R's last dim, but required by ONNX Runtime; left out where R is computed at run time)."""
    weights = {**outer, **{t.name: t for t in graph.initializer}}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            weights[node.output[0]] = node.attribute[0].t
    nodes = []
    for node in graph.node:
        for sub in subgraphs(node):
            _recurrent_forms(sub, weights)
        if node.op_type not in RECURRENT:
            nodes.append(node)
            continue
        _explicit_activation_attributes(node)
        if not any(a.name == "hidden_size" for a in node.attribute) and node.input[2] in weights:
            node.attribute.append(helper.make_attribute("hidden_size", int(weights[node.input[2]].dims[-1])))
        nodes.extend(_time_major(node))
    replace_field(graph.node, nodes)


def _simplify(proto: onnx.ModelProto) -> None:
    """Rewrites that keep the meaning and spare every lowering some operators: Constant nodes become
    initializers, all-zero initial states (exporters compute them from the batch size with Shape and
    ConstantOfShape) become omitted inputs, which the operators define as zeros, and nodes whose
    outputs nobody reads go."""
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    zeros = {t.name for t in graph.initializer if not np.any(numpy_helper.to_array(t))}
    for node in graph.node:
        if node.op_type in RECURRENT:
            inputs = list(node.input)
            for k in (5, 6):
                if k < len(inputs) and inputs[k] and _all_zero(inputs[k], producers, zeros):
                    inputs[k] = ""
            while inputs and not inputs[-1]:
                inputs.pop()
            replace_field(node.input, inputs)
    drop_unused(graph)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


_PASS_ZEROS = {"Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Identity", "Cast", "Tile"}


def _all_zero(name: str, producers: dict[str, onnx.NodeProto], zeros: set[str]) -> bool:
    """Whether `name` is zeros whatever the inputs: a zero constant moved around or broadcast."""
    if name in zeros:
        return True
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type == "ConstantOfShape":
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1))
        return not np.any(value)
    return node.op_type in _PASS_ZEROS and _all_zero(node.input[0], producers, zeros)


def _explicit_activation_attributes(node: onnx.NodeProto) -> None:
    """Only where ORT's defaults differ (0 for Affine, ThresholdedRelu, ScaledTanh), so that other
    nodes reach every lowering as the user wrote them."""
    attrs = reference.parse_attributes(node)
    names = [name for name, _, _ in attrs.explicit]
    if not {n.lower() for n in names} & {"affine", "thresholdedrelu", "scaledtanh"}:
        return
    alphas = [a for name, a, _ in attrs.explicit if reference.parameters_taken(name)[0]]
    betas = [b for name, _, b in attrs.explicit if reference.parameters_taken(name)[1]]
    keep = [a for a in node.attribute if a.name not in ("activation_alpha", "activation_beta")]
    replace_field(node.attribute, keep)
    if alphas:
        node.attribute.append(helper.make_attribute("activation_alpha", alphas))
    if betas:
        node.attribute.append(helper.make_attribute("activation_beta", betas))


def _time_major(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """A `layout=1` node as Transpose -> `layout=0` node -> Transpose; others unchanged."""
    layout = next((a for a in node.attribute if a.name == "layout"), None)
    if layout is None or layout.i == 0:
        return [node]
    layout.i = 0
    base = node.name or f"{node.op_type}_{node.output[0] or node.output[1]}"
    before, after = [], []
    inputs, outputs = list(node.input), list(node.output)
    for k in (0, 5, 6):  # X [B, S, I] -> [S, B, I]; initial_h / initial_c [B, D, H] -> [D, B, H]
        if k < len(inputs) and inputs[k]:
            name = f"{base}.time_major.{k}"
            before.append(helper.make_node("Transpose", [inputs[k]], [name], name=name, perm=[1, 0, 2]))
            inputs[k] = name
    for k, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):  # Y [S, D, B, H] -> [B, S, D, H]
        if k < len(outputs) and outputs[k]:
            name = f"{base}.layout0.{k}"
            after.append(helper.make_node("Transpose", [name], [outputs[k]], name=f"{base}.batch_major.{k}",
                                          perm=perm))
            outputs[k] = name
    replace_field(node.input, inputs)
    replace_field(node.output, outputs)
    return before + [node] + after


def replace_field(field: Any, items: Iterable[Any]) -> None:
    """A repeated protobuf field's contents replaced by `items` (read before the field is cleared)."""
    items = list(items)
    del field[:]
    field.extend(items)
