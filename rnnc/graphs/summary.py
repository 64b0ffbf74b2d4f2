"""`rnnc summary`: a layer table with output shapes and parameter counts, like Keras' summary()."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from rnnc.graphs.model import Model


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    output_shape: str
    params: int


def summarize(model: Model) -> list[Layer]:
    """One row per layer: from the spec when there is one, else from the imported graph (or, for a
    TorchScript model with no ONNX graph, from its submodules)."""
    if model.spec is not None and model.torch_module is not None:
        return _from_spec(model)
    return _from_onnx(model)


def _from_spec(model: Model) -> list[Layer]:
    spec, module = model.spec, model.torch_module

    def count(name: str) -> int:  # a parameter by its name, or every one under a module's name + "."
        return sum(p.numel() for n, p in module.named_parameters()
                   if (n == name or (name.endswith(".") and n.startswith(name))) and p.requires_grad)

    mode = spec.output.mode
    seq = "(batch, seq" if mode != "one_to_many" else f"(batch, {spec.steps}"  # one_to_many: one step in, steps out
    rows = []
    if spec.input.type == "tokens":
        rows.append(Layer("embedding", "Embedding", f"{seq}, {spec.input.embedding_dim})", count("embedding.")))
    rnn = spec.rnn
    last_only = mode in ("many_to_one", "encoder_decoder")  # the top layer's final state goes on
    rows += _cells(count, "rnn", rnn, seq, last_only, "encoder " if mode == "encoder_decoder" else "")
    dense = spec.output.dense
    if dense:
        shape = f"(batch, {dense.units})" if mode == "many_to_one" else f"{seq}, {dense.units})"
        rows.append(Layer("dense", f"Dense ({dense.activation})", shape, count("dense.")))
    if spec.decoder is not None:
        dec, out = spec.decoder, f"(batch, {spec.steps}"
        rows.append(Layer("decoder_embedding", "Embedding", f"{out}, {dec.embedding_dim})", count("dec_embedding.")))
        rows += _cells(count, "decoder", dec, out, False, "decoder ")
        rows.append(Layer("projection", "Dense (softmax)", f"{out}, {dec.vocab_size})", count("projection.")))
    return rows


def _cells(count: Any, prefix: str, rnn: Any, seq: str, last_only: bool, role: str) -> list[Layer]:
    """One row per layer of a stack (`prefix` names its parameters: rnn or decoder)."""
    cell = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[rnn.cell]
    width = rnn.hidden_size * rnn.directions
    rows = []
    for layer in range(rnn.num_layers):
        top = layer == rnn.num_layers - 1
        shape = f"(batch, {width})" if top and last_only else f"{seq}, {width})"
        kind = f"{'Bidirectional ' if rnn.bidirectional else ''}{cell}"
        if rnn.cell == "rnn":
            kind += f" ({rnn.activation})"
        params = sum(count(f"{prefix}.{w}_l{layer}{sfx}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                     for sfx in ("", "_reverse"))
        name = f"{rnn.cell}_{layer}" if prefix == "rnn" else f"decoder_{rnn.cell}_{layer}"
        rows.append(Layer(name, (role.capitalize() + kind) if role else kind, shape, params))
    return rows


def _from_onnx(model: Model) -> list[Layer]:
    """Layers of an imported graph: each node that reads float initializers (its weights), named
    as a user would (a MatMul and the Add of its bias are one Dense layer), with the output shape
    ONNX shape inference gives it. Nodes inside If / Loop / Scan bodies are layers too, named
    after the branch (`then/...`, `else/...`, `body/...`). Nodes that read no weights are left
    out, and the scalar constants of nodes that are no layer (a Mul by 2) are one row; each
    initializer counts once (towards the first node that reads it), and initializers no
    node reads make a last row, so that the total is every float initializer's size: BatchNorm's
    running mean and variance count, as Keras counts them (non-trainable parameters)."""
    proto = model.onnx
    if proto is None:
        return _from_module(model)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - no inference: rows without shapes
        pass
    walk = _Walk(_shapes(proto.graph))
    walk.graph(proto.graph, "", {})
    if walk.scalars:
        walk.rows.append(Layer("(scalar constants)", "Constants", "", walk.scalars))
    left = sum(size for key, size in walk.sizes.items() if key not in walk.counted)
    if left:
        walk.rows.append(Layer("(read by no node)", "Initializers", "", left))
    return walk.rows


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_BRANCH = {"then_branch": "then", "else_branch": "else", "body": "body"}
_NAMED = {"BatchNormalization": "BatchNorm", "LayerNormalization": "LayerNorm",
          "InstanceNormalization": "InstanceNorm", "GroupNormalization": "GroupNorm"}


class _Walk:
    """One pass over a graph and its subgraphs, collecting rows."""

    def __init__(self, shapes: dict[str, str]) -> None:
        self.shapes = shapes
        self.sizes: dict[tuple[str, str], int] = {}  # (scope, initializer) -> elements
        self.dims: dict[tuple[str, str], list[int]] = {}
        self.counted: set[tuple[str, str]] = set()
        self.rows: list[Layer] = []
        self.scalars = 0  # scalar constants read by nodes that are no layer

    def graph(self, graph: onnx.GraphProto, prefix: str, outer: dict[str, tuple[str, str]]) -> None:
        scope = dict(outer)  # initializer name -> its key; a subgraph sees its parents' too
        for init in graph.initializer:
            if init.data_type in _FLOATS:
                key = (prefix, init.name)
                self.sizes[key] = int(np.prod(init.dims, dtype=np.int64))
                self.dims[key] = list(init.dims)
                scope[init.name] = key
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        merged: set[int] = set()
        for node in graph.node:
            if id(node) in merged:
                continue
            weights = [scope[i] for i in node.input if i in scope]
            last = node
            if node.op_type == "MatMul" and weights:
                bias = _bias_add(node, consumers, scope)
                if bias is not None:
                    merged.add(id(bias))
                    weights.append(scope[next(i for i in bias.input if i in scope)])
                    last = bias
            dims = {n: self.dims[k] for n, k in scope.items()}
            kind, fresh = _kind(node, dims), self._fresh(weights)
            if kind == node.op_type and fresh and all(self.sizes[k] == 1 for k in fresh):
                self.scalars += self._count(fresh)  # a Mul by 2, a Greater than 0: no layer
            elif fresh:
                name = prefix + (node.name or node.output[0]).lstrip("/")
                out = next((o for o in last.output if o), "")
                self.rows.append(Layer(name, kind, self.shapes.get(out, ""), self._count(fresh)))
            for attr in sorted(node.attribute, key=lambda a: list(_BRANCH).index(a.name) if a.name in _BRANCH else 9):
                for i, sub in enumerate(list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])):
                    label = _BRANCH.get(attr.name, attr.name) + (f"{i}" if len(attr.graphs) > 1 else "")
                    self.graph(sub, f"{prefix}{label}/", scope)

    def _fresh(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [k for k in dict.fromkeys(keys) if k not in self.counted]

    def _count(self, keys: list[tuple[str, str]]) -> int:
        self.counted.update(keys)
        return sum(self.sizes[k] for k in keys)


def _bias_add(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
              scope: dict[str, tuple[str, str]]) -> onnx.NodeProto | None:
    """The Add that adds a constant bias to a MatMul's output (its only reader), if there is one."""
    readers = consumers.get(node.output[0], [])
    if len(readers) == 1 and readers[0].op_type == "Add" and any(i in scope for i in readers[0].input):
        return readers[0]
    return None


def _kind(node: onnx.NodeProto, dims: dict[str, list[int]]) -> str:
    """What a user calls the layer: 'Bidirectional LSTM(128)', 'Dense(10)', 'Conv1d(64, kernel 3)';
    `dims` holds the shapes of the float initializers the node can read."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.type != onnx.AttributeProto.GRAPH}
    weight = next((dims[i] for i in node.input[1:2] if i in dims), None)
    op = node.op_type
    if op in ("LSTM", "GRU", "RNN"):
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        prefix = {"bidirectional": "Bidirectional ", "reverse": "Reverse "}.get(direction, "")
        acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
        act = f", {acts[0].lower()}" if op == "RNN" and acts and acts[0] != "Tanh" else ""
        return f"{prefix}{op}({attrs.get('hidden_size', '?')}{act})"
    if op == "Gemm" and weight and len(weight) == 2:
        return f"Dense({weight[0] if attrs.get('transB') else weight[1]})"
    if op == "MatMul":
        shape = next((dims[i] for i in node.input if i in dims), None)
        return f"Dense({shape[-1]})" if shape else "MatMul"
    if op == "Conv" and weight and len(weight) >= 3:
        kernel = "x".join(str(k) for k in weight[2:])
        return f"Conv{len(weight) - 2}d({weight[0]}, kernel {kernel})"
    if op == "Gather" and node.input[0] in dims and node.input[1] not in dims:
        table = dims[node.input[0]]
        return f"Embedding({', '.join(map(str, table))})"
    if op in _NAMED:
        size = next((dims[i] for i in node.input[1:2] if i in dims), None)
        return f"{_NAMED[op]}({size[0] if size and len(size) == 1 else 'x'.join(map(str, size or []))})"
    return op


def _shapes(graph: onnx.GraphProto, names: set[str] | None = None) -> dict[str, str]:
    """Every value's shape that shape inference found, in this graph and its subgraphs: '(batch, seq, 8)'.
    A symbolic dim keeps its name where the graph's inputs name it; one that inference made up
    (`unk__0`, `Addoutput_dim_1`) is '?'."""
    if names is None:
        names = {d.dim_param for v in graph.input for d in v.type.tensor_type.shape.dim if d.dim_param}
    found = {}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            dims = [str(d.dim_value) if d.HasField("dim_value") else
                    (d.dim_param if d.dim_param in names else "?") for d in t.shape.dim]
            found[v.name] = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    for node in graph.node:
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                found.update(_shapes(sub, names))
    return found


def _from_module(model: Model) -> list[Layer]:
    """A TorchScript model without an ONNX graph: one row per submodule holding weights (its own
    parameters and floating-point buffers, such as BatchNorm's running statistics)."""
    import torch

    module = torch.jit.load(str(model.origin), map_location="cpu")
    rows = []
    for name, sub in module.named_modules():
        tensors = list(sub.named_parameters(recurse=False)) + [
            (n, b) for n, b in sub.named_buffers(recurse=False) if b.is_floating_point()]
        params = sum(t.numel() for _, t in tensors)
        if params:
            rows.append(Layer(name or "(forward)", _module_kind(sub), "", params))
    return rows


def _module_kind(sub: Any) -> str:
    kind = getattr(sub, "original_name", type(sub).__name__)
    try:
        if kind in ("LSTM", "GRU", "RNN"):
            return f"{'Bidirectional ' if sub.bidirectional else ''}{kind}({sub.hidden_size})"
        if kind == "Linear":
            return f"Dense({sub.out_features})"
        if kind == "Embedding":
            return f"Embedding({sub.num_embeddings}, {sub.embedding_dim})"
    except (AttributeError, RuntimeError):
        pass
    return kind


def render(model: Model, rows: list[Layer]) -> str:
    header = ("Layer", "Type", "Output shape", "Params")
    table = [header] + [(r.name, r.kind, r.output_shape, f"{r.params:,}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    line = "-" * (sum(widths) + 6)
    out = [f'Model: "{model.name}"', line]
    for i, row in enumerate(table):
        out.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            out.append(line)
    out += [line, f"Total params: {sum(r.params for r in rows):,}"]
    return "\n".join(out)
