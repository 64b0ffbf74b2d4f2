"""The work of one call: its FLOPs and the recurrent weights R it reads, from the model's ONNX graph.

A bench row says how fast a backend ran; these say how much there was to do, so that a report can
put the row beside the machine's limits (`rnnc.bench.roof`). Counted from the graph, not the spec,
so that spec models and imported ONNX models are counted alike.

- A recurrent node (LSTM, GRU, RNN: G = 4, 3, 1 gates, D directions, hidden H, input I) does
  2*D*G*H*(I+H) FLOPs per step and batch row (its two matmuls, X*W^T and H*R^T; the gates'
  elementwise work is not counted) and reads all of its R, D*G*H*H weights, once per step whatever
  the batch: the traffic that batching amortises.
- A MatMul or Gemm counts 2*M*K*N where shape inference, run with the call's concrete input
  shapes, knows its shapes; one whose shapes stay unknown is left out (recurrent models spend
  their time in the cells).
- A Loop whose trip count is a constant (a generative model's steps) counts its body that many
  times. A recurrent node inside any other subgraph (a Loop run a data-dependent number of times,
  a Scan, an If branch) makes the count unknown.

Everything is None when it cannot be known (no graph, no recurrent node, a size that shape
inference cannot tell), never a guess and never an exception.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

from onnx import AttributeProto, TensorProto, helper, numpy_helper

from rnnc.graphs.walk import all_graphs, all_nodes, outer_reads, subgraphs
from rnnc.records.manifest import TensorInfo

if TYPE_CHECKING:
    import onnx

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
_SMALL = 64  # initializers kept whole for shape inference (shape constants); larger ones by shape alone
Dims = Optional[tuple[Optional[int], ...]]


@dataclass(frozen=True)
class Work:
    """What one call of a model at one (batch, seq) does.

    `flops`: per call. `r_weights`: the elements of every recurrent node's R, the set a step of the
    whole stack reads (each node's once per step). `r_reads`: the elements of R read per call, each
    node's R times the steps it runs (a generative model's decoder: its generated steps)."""

    flops: int
    r_weights: int
    r_reads: int

    def r_bytes_per_step(self, precision: str) -> int | None:
        """R's bytes at a precision (`fp32`, `fp16`, `bf16`, `int8`); None for an unknown one."""
        size = BYTES_PER_WEIGHT.get(precision)
        return None if size is None else self.r_weights * size

    def r_bytes_per_call(self, precision: str) -> int | None:
        size = BYTES_PER_WEIGHT.get(precision)
        return None if size is None else self.r_reads * size


def model_work(proto: onnx.ModelProto | None, inputs: Iterable[TensorInfo], batch: int, seq: int) -> Work | None:
    """The work of one call at (batch, seq), or None where the graph does not tell it (see the module)."""
    if proto is None or not any(n.op_type in GATES for n in all_nodes(proto.graph)):
        return None
    concrete = {t.name: t.shape(batch, seq) for t in inputs}
    dims = _inferred_dims(proto, concrete, batch, seq)
    constants = _int_constants(proto.graph)
    total = _graph_work(proto.graph, 1, True, dims, constants, batch, seq)
    return None if total is None else Work(*total)


def _graph_work(graph: onnx.GraphProto, times: int | None, main: bool, dims: dict[str, Dims],
                constants: dict[str, int], batch: int, seq: int) -> tuple[int, int, int] | None:
    """(flops, r_weights, r_reads) of `graph` run `times` times (None: an unknown number)."""
    flops = weights = reads = 0
    for node in graph.node:
        if node.op_type in GATES:
            cell = _cell(node, dims, main, batch, seq)
            if cell is None or times is None:
                return None
            step_flops, r, steps = cell
            flops, weights, reads = flops + times * step_flops, weights + r, reads + times * steps * r
        elif node.op_type in ("MatMul", "Gemm") and times is not None:
            flops += times * (_matmul_flops(node, dims) or 0)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            inner = _trips(node, constants) if node.op_type == "Loop" else None
            for sub in subs:
                found = _graph_work(sub, None if inner is None or times is None else times * inner, False, dims,
                                    constants, batch, seq)
                if found is None:
                    return None
                flops, weights, reads = flops + found[0], weights + found[1], reads + found[2]
    return flops, weights, reads


def _cell(node: onnx.NodeProto, dims: dict[str, Dims], main: bool, batch: int, seq: int
          ) -> tuple[int, int, int] | None:
    """A recurrent node's (FLOPs per call, R elements, steps), or None where a size is unknown."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w, r = (dims.get(node.input[i]) if len(node.input) > i else None for i in (1, 2))
    hidden = attrs.get("hidden_size") or (r[2] if r and len(r) == 3 else None)
    direction = attrs.get("direction", b"forward")
    d = 2 if (direction.decode() if isinstance(direction, bytes) else direction) == "bidirectional" else 1
    features = w[2] if w and len(w) == 3 else None
    x = dims.get(node.input[0])
    t_axis, b_axis = (1, 0) if attrs.get("layout", 0) == 1 else (0, 1)
    steps = x[t_axis] if x and len(x) == 3 and x[t_axis] else (seq if main else None)
    rows = x[b_axis] if x and len(x) == 3 and x[b_axis] else batch
    if not hidden or not features or not steps:
        return None
    g = GATES[node.op_type]
    return 2 * d * g * hidden * (features + hidden) * steps * rows, d * g * hidden * hidden, steps


def _matmul_flops(node: onnx.NodeProto, dims: dict[str, Dims]) -> int | None:
    """2*M*K*N summed over the broadcast batch of a MatMul or Gemm, where its shapes are known."""
    a, out = dims.get(node.input[0]), dims.get(node.output[0])
    if not a or not out or any(v is None for v in (*a, *out)):
        return None
    if node.op_type == "Gemm":
        trans = next((helper.get_attribute_value(x) for x in node.attribute if x.name == "transA"), 0)
        if len(a) != 2:
            return None
        k = a[0] if trans else a[1]
    else:
        k = a[-1]
    return 2 * math.prod(out) * k


def _trips(loop: onnx.NodeProto, constants: dict[str, int]) -> int | None:
    """A Loop's trip count where it is a constant (an initializer or a Constant node)."""
    return constants.get(loop.input[0]) if loop.input and loop.input[0] else None


def _int_constants(graph: onnx.GraphProto) -> dict[str, int]:
    """Scalar integer constants of a graph and its subgraphs: initializers and Constant nodes."""
    tensors = [(t.name, t) for g in all_graphs(graph) for t in g.initializer]
    tensors += [(n.output[0], a.t) for n in all_nodes(graph) if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    return {name: int(numpy_helper.to_array(t).reshape(-1)[0]) for name, t in tensors
            if t.data_type in (TensorProto.INT64, TensorProto.INT32) and math.prod(t.dims) == 1}


def _inferred_dims(proto: onnx.ModelProto, concrete: dict[str, tuple[int, ...]], batch: int, seq: int
                   ) -> dict[str, Dims]:
    """Every value's dims (None where a size is unknown) after ONNX shape inference on a copy of
    the graph's structure with the call's input shapes. Large initializers go in by shape only, so
    the copy costs little beside the model; small ones (shape constants) whole, also into each
    subgraph that reads them, since inference does not follow constant values across scopes. A dim
    left symbolic named `batch` or `seq` (rnnc's names for those axes) takes the call's size.
    Declared shapes where inference fails."""
    import onnx

    graph = proto.graph
    small = {t.name: t for t in graph.initializer if math.prod(t.dims) <= _SMALL}
    large = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in graph.initializer if t.name not in small]
    named = {t.name for t in graph.initializer}
    inputs = [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, list(concrete[v.name]))
              if v.name in concrete else v for v in graph.input if v.name not in named]
    copy = helper.make_graph(list(graph.node), graph.name, inputs + large, list(graph.output), list(small.values()))
    for node in list(all_nodes(copy)):
        reads = sorted(r for r in outer_reads(node) if r in small)
        for sub in subgraphs(node):
            sub.initializer.extend(small[r] for r in reads)
    model = helper.make_model(copy, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph inference cannot follow leaves its declared shapes
        pass
    sizes = {"batch": batch, "seq": seq}
    dims: dict[str, Dims] = {}
    for g in all_graphs(model.graph):
        for v in (*g.input, *g.output, *g.value_info):
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                dims[v.name] = tuple(d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param)
                                     for d in v.type.tensor_type.shape.dim)
    for g in all_graphs(proto.graph):
        for t in g.initializer:
            dims[t.name] = tuple(int(d) for d in t.dims)
    return dims
