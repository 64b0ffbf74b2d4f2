"""`rnnc summary`: a layer table with output shapes and parameter counts, like Keras' summary()."""
from __future__ import annotations

from dataclasses import dataclass

from rnnc.graphs.model import Model


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    output_shape: str
    params: int


def summarize(model: Model) -> list[Layer]:
    """One row per layer: from the spec when there is one, else per ONNX node holding weights."""
    if model.spec is not None and model.torch_module is not None:
        return _from_spec(model)
    return _from_onnx(model)


def _from_spec(model: Model) -> list[Layer]:
    spec, module = model.spec, model.torch_module

    def count(prefix: str) -> int:
        return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix) and p.requires_grad)

    rows = []
    if spec.input.type == "tokens":
        rows.append(Layer("embedding", "Embedding", f"(batch, seq, {spec.input.embedding_dim})", count("embedding.")))
    rnn = spec.rnn
    cell = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[rnn.cell]
    width = rnn.hidden_size * rnn.directions
    for layer in range(rnn.num_layers):
        top = layer == rnn.num_layers - 1
        shape = f"(batch, {width})" if top and spec.output.mode == "many_to_one" else f"(batch, seq, {width})"
        kind = f"{'Bidirectional ' if rnn.bidirectional else ''}{cell}"
        if rnn.cell == "rnn":
            kind += f" ({rnn.activation})"
        params = count(f"rnn.weight_ih_l{layer}") + count(f"rnn.weight_hh_l{layer}") \
            + count(f"rnn.bias_ih_l{layer}") + count(f"rnn.bias_hh_l{layer}")
        rows.append(Layer(f"{rnn.cell}_{layer}", kind, shape, params))
    dense = spec.output.dense
    if dense:
        shape = f"(batch, {dense.units})" if spec.output.mode == "many_to_one" else f"(batch, seq, {dense.units})"
        rows.append(Layer("dense", f"Dense ({dense.activation})", shape, count("dense.")))
    return rows


def _from_onnx(model: Model) -> list[Layer]:
    import numpy as np

    sizes = {init.name: int(np.prod(init.dims)) for init in model.onnx.graph.initializer
             if init.data_type != 7}  # int64 tensors are shapes and indices, not parameters
    rows = []
    for node in model.onnx.graph.node:
        params = sum(sizes.get(i, 0) for i in node.input)
        if params:
            rows.append(Layer(node.name or node.output[0], node.op_type, "", params))
    return rows


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
