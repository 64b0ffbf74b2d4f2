"""`--bind NAME=VALUE`: an input fixed at compile time, and the graph folded around it.

A bound input becomes an initializer; then `fold_constants` evaluates every node whose inputs are
all constants (with `onnx.reference`, the evaluator the float64 reference uses) and inlines each
`If` whose condition became constant, so the branch a sample rate or a mode selects is the only
one left and no artifact takes the bound input any more. Folding also runs without a bind: a
constant subgraph (a Cast of a scalar, a Shape of a weight) is then a constant to every lowering.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from rnnc.errors import UserError
from rnnc.graphs.walk import subgraphs

# nodes never folded: their value is not a function of their inputs
_UNFOLDABLE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
               "Bernoulli", "Loop", "Scan", "If", "SequenceEmpty", "Optional"}
_FOLD_LIMIT = 1 << 24  # elements: a fold never writes a constant bigger than this


def parse_bind(text: str) -> dict[str, np.ndarray]:
    """`sr=16000,mode=1,table=t.npy` -> {"sr": array(16000), ...}: numbers, true/false, .npy files."""
    values: dict[str, np.ndarray] = {}
    problems = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            problems.append(f"--bind: {item!r} is not NAME=VALUE (a number, true/false, or a .npy file)")
        elif name in values:
            problems.append(f"--bind: input {name!r} is given twice")
        else:
            try:
                values[name] = _value(value)
            except ValueError as err:
                problems.append(f"--bind {name}: {err}")
    if problems:
        raise UserError(*problems)
    return values


def _value(text: str) -> np.ndarray:
    if text.lower().endswith(".npy"):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{text}: no such file")
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{text}: not a readable .npy file ({err})") from None
    if text.lower() in ("true", "false"):
        return np.array(text.lower() == "true")
    if re.fullmatch(r"[+-]?\d+", text):
        return np.array(int(text), dtype=np.int64)
    try:
        return np.array(float(text), dtype=np.float64)
    except ValueError:
        raise ValueError(f"{text!r} is not a number, true/false, or a .npy file") from None


def bind_record(values: dict[str, np.ndarray]) -> dict[str, Any]:
    """The bound values as JSON (kept in the manifest's source, so `verify DIR` rebinds them)."""
    return {k: {"dtype": v.dtype.name, "value": v.tolist()} for k, v in values.items()}


def bind_from_record(record: dict[str, Any] | None) -> dict[str, np.ndarray]:
    return {k: np.array(v["value"], dtype=v["dtype"]) for k, v in (record or {}).items()}


def bind_inputs(proto: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `proto` whose inputs in `values` are constants, folded (see the module docstring).
    Each value must fit its input: a known name, the input's element kind, its rank and sizes."""
    if not values:
        return proto
    initializers = {t.name for t in proto.graph.initializer}
    free = [v for v in proto.graph.input if v.name not in initializers]
    by_name = {v.name: v for v in free}
    problems = [f"--bind: no input named {n!r}; the model's inputs are {', '.join(repr(v.name) for v in free)}"
                for n in values if n not in by_name]
    arrays = {}
    for name, value in values.items():
        if name in by_name:
            try:
                arrays[name] = _fit(by_name[name], value)
            except ValueError as err:
                problems.append(f"--bind {name}: {err}")
    if problems:
        raise UserError(*problems)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    kept = [v for v in out.graph.input if v.name not in arrays]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    if out.ir_version < 4:  # initializers must be inputs before IR 4
        out.ir_version = 4
    return fold_constants(out)


def _fit(value_info: onnx.ValueInfoProto, value: np.ndarray) -> np.ndarray:
    """`value` as the input's element type and shape, or a `ValueError` saying why it does not fit."""
    tensor = value_info.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    kind, given = np.dtype(dtype).kind, value.dtype.kind
    if kind in "iu" and given == "f" and not np.all(np.mod(value, 1) == 0):
        raise ValueError(f"{value.tolist() if value.size < 8 else value.dtype.name} is not an integer; "
                         f"input {value_info.name!r} is {np.dtype(dtype).name}")
    if kind == "b" and not (given == "b" or (given in "iu" and np.isin(value, (0, 1)).all())):
        raise ValueError(f"input {value_info.name!r} is bool: bind true or false")
    if kind in "iuf" and given not in "iufb":
        raise ValueError(f"a {value.dtype.name} value for the {np.dtype(dtype).name} input {value_info.name!r}")
    if tensor.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if value.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, value.shape)):
            if not dims:
                raise ValueError(f"a value of shape {list(value.shape)} for a scalar input; give one number")
            want = "x".join("?" if d is None else str(d) for d in dims)
            raise ValueError(f"a value of shape {list(value.shape)} for input {value_info.name!r} of shape "
                             f"{want}; give a .npy file of that shape")
    return np.asarray(value).astype(dtype)


# -- folding ---------------------------------------------------------------------------------------

def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with constant nodes evaluated and constant-condition Ifs inlined, in
    subgraphs too (a weight an exporter reshapes inside an If branch becomes a constant there)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    _fold_graph(out.graph, {}, out.opset_import, out.ir_version >= 4, _static_shapes(out))
    drop_unused(out.graph)
    return out


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Values of the top graph whose shapes are fully known (ONNX shape inference): a `Shape` or
    `Size` of one of them is a constant, however it is computed."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - no inference, no static shapes
        return {}
    found = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info):
        t = v.type.tensor_type if v.type.WhichOneof("value") == "tensor_type" else None
        if t is not None and t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            found[v.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    return found


def _shape_value(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> np.ndarray | None:
    """`Shape(x)` (with start / end) or `Size(x)` of a value of static shape, else None."""
    if node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx") or node.input[0] not in shapes:
        return None
    dims = shapes[node.input[0]]
    if node.op_type == "Size":
        return np.array(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return np.array(dims[slice(start, end)], dtype=np.int64)


def _fold_graph(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], opsets: Any, constants: bool,
                shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    consts = {**outer, **{t.name: t for t in graph.initializer}}
    outputs = {o.name for o in graph.output}
    queue = list(graph.node)
    kept: list[onnx.NodeProto] = []
    while queue:
        node = queue.pop(0)
        if node.op_type == "If" and node.input[0] in consts:
            queue[:0] = _inline(graph, node, consts)
            continue
        inputs = [i for i in node.input if i]
        static = _shape_value(node, shapes or {}) if constants and node.output[0] not in outputs else None
        if static is not None:
            _add(graph, consts, node.output[0], static)
            continue
        if (constants and not any(o in outputs for o in node.output)  # a graph output stays a node's
                and node.domain in ("", "ai.onnx") and node.op_type not in _UNFOLDABLE
                and all(i in consts for i in inputs) and not _has_subgraph(node)):
            values = _evaluate(node, {i: numpy_helper.to_array(consts[i]) for i in inputs}, opsets)
            if values is not None:
                for name, value in zip(node.output, values):
                    if name:
                        _add(graph, consts, name, value)
                continue
        for sub in subgraphs(node):
            _fold_graph(sub, consts, opsets, constants)
            drop_unused(sub)
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _inline(graph: onnx.GraphProto, node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]
            ) -> list[onnx.NodeProto]:
    """The nodes of the branch a constant condition takes, then Identities onto the If's outputs.
    Names in a subgraph never repeat outer names (ONNX's SSA rule), so they are kept as they are."""
    cond = bool(numpy_helper.to_array(consts[node.input[0]]).reshape(-1)[0])
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
    for t in branch.initializer:
        _add(graph, consts, t.name, numpy_helper.to_array(t))
    nodes = list(branch.node)
    for inner, outer in zip(branch.output, node.output):
        if outer:
            nodes.append(helper.make_node("Identity", [inner.name], [outer], name=f"{node.name}/{outer}"))
    return nodes


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: Any) -> list[np.ndarray] | None:
    """The node's outputs on constant inputs, or None where it cannot or should not be folded."""
    from rnnc.graphs.reference import NEW_OPS

    try:
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                  for n, a in feeds.items()]
        outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs), opset_imports=list(opsets))
        values = ReferenceEvaluator(model, new_ops=NEW_OPS).run(None, feeds)
    except Exception:  # noqa: BLE001 - a node the evaluator cannot run here is left to the backends
        return None
    arrays = [np.asarray(v) for v in values]
    if any(a.dtype == object or a.size > _FOLD_LIMIT for a in arrays):
        return None
    return arrays


def _add(graph: onnx.GraphProto, consts: dict[str, onnx.TensorProto], name: str, value: np.ndarray) -> None:
    tensor = numpy_helper.from_array(np.asarray(value), name)
    graph.initializer.append(tensor)
    consts[name] = tensor


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def drop_unused(graph: onnx.GraphProto) -> None:
    """Nodes whose outputs nobody reads (subgraphs' reads of outer names count), and unread
    initializers that are not graph inputs."""
    while True:
        used = _reads(graph) | {o.name for o in graph.output}
        live = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    inputs = {i.name for i in graph.input}
    kept = [t for t in graph.initializer if t.name in used or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for sub in subgraphs(node):
            names |= _reads(sub) | {o.name for o in sub.output}
    return names
