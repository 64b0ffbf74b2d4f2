"""The shapes of an imported model's inputs and outputs, and which input axes are batch and sequence.

Which input axis is the batch and which the sequence is read off the recurrent node's `X` (axis 1
and 0 for `layout=0`, 0 and 1 for `layout=1`): each symbolic input dim is followed through ONNX
shape inference to `X`. Those two axes stay symbolic in every artifact; any other symbolic dim is
fixed by `--shapes`. A model with a symbolic dim needs `--shapes` to know what to build and verify.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from rnnc.errors import UserError
from rnnc.graphs.model import TensorInfo
from rnnc.graphs.walk import all_graphs

RECURRENT = ("LSTM", "GRU", "RNN")
# element types an input or output may have: every numeric type numpy holds, and bool
DTYPES = {t: helper.tensor_dtype_to_np_dtype(t).name for t in (
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32,
    TensorProto.INT16, TensorProto.INT8, TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16,
    TensorProto.UINT8, TensorProto.BOOL)}


@dataclass
class InputShapes:
    """What `shape_inputs` finds out about a checked graph's inputs."""

    inputs: dict[str, tuple[str, tuple]]  # name -> (dtype, dims with "batch"/"seq" or sizes)
    renames: dict[str, str]  # symbolic dim of the file -> "batch" / "seq"
    batch_seq: tuple[int, int]  # the sizes to build and verify at
    high: dict[str, int]  # token-id input -> ids stay below this (its embedding table's rows)
    low: dict[str, int]  # index input into another input -> ids from -rows (ONNX's negative indices)
    lengths: list[str]  # `sequence_lens` inputs
    values: dict[str, tuple[int, ...]]  # integer input -> the values it is compared with (and neighbours)


def shape_inputs(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> InputShapes:
    """Every input's dtype and dims, batch and sequence axes by role and the others by size, with
    `shapes` (from --shapes) checked against the model: every problem in one `UserError`."""
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    unknown = sorted(set(shapes) - {v.name for v in inputs})
    if unknown:
        raise UserError(f"--shapes: no input named {', '.join(map(repr, unknown))}; the model's inputs are "
                        f"{', '.join(repr(v.name) for v in inputs)}")
    tagged, declared = _tag_inputs(proto, initializers)
    roles, static = _batch_seq_axes(tagged)
    _same_axis_roles(roles, declared, shapes)
    sizes = _given_sizes(declared, roles, shapes)
    result = _input_dims(inputs, declared, roles, sizes, shapes)
    batch = sizes.get("batch", static.get("batch"))
    seq = sizes.get("seq", static.get("seq"))
    renames = {sym: role for sym, role in roles.items() if not sym.startswith("rnnc.")}
    high, low = _token_bounds(proto, result)
    return InputShapes(result, renames, (int(batch or 1), int(seq or 1)), high, low,
                       _length_inputs(proto, result), _compared_values(proto, result))


def _tag_inputs(proto: onnx.ModelProto, initializers: set[str]
                ) -> tuple[onnx.ModelProto, dict[str, list | None]]:
    """A copy of `proto` whose unnamed symbolic input dims are named `rnnc.<input>.<axis>`, so that
    shape inference carries them to X, and each input's dims (None where it declares no shape)."""
    tagged = onnx.ModelProto()
    tagged.CopyFrom(proto)
    declared: dict[str, list | None] = {}
    for k, v in enumerate(i for i in tagged.graph.input if i.name not in initializers):
        if not v.type.tensor_type.HasField("shape"):
            declared[v.name] = None
            continue
        dims = []
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if not d.HasField("dim_value") and not d.dim_param:
                d.dim_param = f"rnnc.{k}.{axis}"  # unnamed: tag it, to follow it to X
            dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param)
        declared[v.name] = dims
    return tagged, declared


def _given_sizes(declared: dict[str, list | None], roles: dict[str, str],
                 shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Symbol or role ("batch", "seq") -> the size --shapes gives it, which must agree with the
    model's static dims and with itself wherever the same symbol or role recurs."""
    problems, sizes = [], {}
    for name, dims in declared.items():
        given = shapes.get(name)
        if given is None:
            continue
        if dims is not None and len(dims) != len(given):
            problems.append(f"--shapes {name}: {len(given)} sizes for an input of rank {len(dims)}")
            continue
        for axis, (d, g) in enumerate(zip(dims or [None] * len(given), given)):
            if isinstance(d, int) and d != g:
                problems.append(f"--shapes {name}: axis {axis} is {d} in the model, not {g}")
            key = roles.get(d, d) if isinstance(d, str) else None
            if key is not None and sizes.setdefault(key, g) != g:
                problems.append(f"--shapes {name}: axis {axis} ({key}) is {sizes[key]} elsewhere, not {g}")
    if problems:
        raise UserError(*problems)
    return sizes


def _input_dims(inputs: list[onnx.ValueInfoProto], declared: dict[str, list | None],
                roles: dict[str, str], sizes: dict[str, int],
                shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, tuple]]:
    """Input name -> (dtype, dims): "batch" / "seq" where the axis has that role, else a size; an
    input with a dim nothing sizes must be given in --shapes."""
    problems = []
    result: dict[str, tuple[str, tuple]] = {}
    for v in inputs:
        dims = declared[v.name]
        if dims is None and v.name not in shapes:
            problems.append(f"input {v.name!r} has no shape in the model; give it, "
                            f"e.g. --shapes {v.name}:1x16")
            continue
        out, needs = [], False
        for d in (dims if dims is not None else shapes[v.name]):
            if isinstance(d, int):
                out.append(d)
            elif d in roles:
                out.append(roles[d])
                needs = needs or roles[d] not in sizes
            else:
                out.append(sizes.get(d))
                needs = needs or d not in sizes
        if needs and v.name not in shapes:
            guess = {"batch": 1, "seq": 16}
            example = "x".join(str(sizes.get(d, guess.get(d, 8))) if isinstance(d, str) or d is None
                               else str(d) for d in out)
            shown = ", ".join("?" if d is None else str(d) for d in out)
            problems.append(f"input {v.name!r} has a symbolic dim ([{shown}]); "
                            f"give --shapes {v.name}:{example}")
            continue
        result[v.name] = (DTYPES[v.type.tensor_type.elem_type], tuple(out))
    if problems:
        raise UserError(*problems)
    return result


def _same_axis_roles(roles: dict[str, str], declared: dict[str, list | None],
                     shapes: dict[str, tuple[int, ...]]) -> None:
    """Symbols shape inference could not tie to X (an exporter names each input's dims apart, and a
    Concat of two inputs keeps the first one's): a symbolic dim at the axis where another input has
    its batch (or sequence) axis, given the same size by --shapes, is taken to be that axis too."""
    axis_roles: dict[int, str] = {}
    role_sizes: dict[str, int] = {}
    for name, dims in declared.items():
        for axis, d in enumerate(dims or []):
            if isinstance(d, str) and d in roles:
                axis_roles.setdefault(axis, roles[d])
                if name in shapes and len(shapes[name]) == len(dims):
                    role_sizes.setdefault(roles[d], shapes[name][axis])
    for name, dims in declared.items():
        given = shapes.get(name)
        if dims is None or given is None or len(given) != len(dims):
            continue
        for axis, (d, size) in enumerate(zip(dims, given)):
            role = axis_roles.get(axis)
            if isinstance(d, str) and d not in roles and role and role_sizes.get(role) == size:
                roles[d] = role


def _batch_seq_axes(tagged: onnx.ModelProto) -> tuple[dict[str, str], dict[str, int]]:
    """Symbolic dims that reach a recurrent node's X as its batch or sequence axis, and the sizes of
    those axes where they are static."""
    try:
        inferred = onnx.shape_inference.infer_shapes(tagged, data_prop=True)
    except Exception:  # noqa: BLE001 - no inference means no symbols to follow, not an error
        inferred = tagged
    shapes = {v.name: v.type.tensor_type.shape for g in all_graphs(inferred.graph)
              for v in list(g.input) + list(g.value_info) + list(g.output)}
    roles: dict[str, str] = {}
    static: dict[str, int] = {}
    for node in (n for g in all_graphs(inferred.graph) for n in g.node):
        if node.op_type not in RECURRENT or node.input[0] not in shapes:
            continue
        dims = shapes[node.input[0]].dim
        if len(dims) != 3:
            continue
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        for role, axis in (("seq", layout), ("batch", 1 - layout)):
            d = dims[axis]
            if d.HasField("dim_value"):
                static.setdefault(role, d.dim_value)
            elif d.dim_param and d.dim_param not in roles:
                roles[d.dim_param] = role
    return roles, static


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for g in all_graphs(proto.graph) for t in g.initializer}
    for g in all_graphs(proto.graph):
        for node in g.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


_PASSES_VALUES = ("Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten")


def _aliases(proto: onnx.ModelProto, inputs: dict[str, tuple[str, tuple]]) -> dict[str, str]:
    """Value name -> the graph input whose values it carries unchanged: through Identity, Cast and
    reshapes, and into a Loop body as the initial value of a loop-carried variable (a generation
    loop's start token indexes the embedding inside the body)."""
    alias = {n: n for n in inputs}
    for g in all_graphs(proto.graph):  # enclosing graphs come before the subgraphs they hold
        for node in g.node:
            if node.op_type in _PASSES_VALUES and node.input and node.input[0] in alias:
                alias[node.output[0]] = alias[node.input[0]]
            elif node.op_type == "Loop":
                body = next((a.g for a in node.attribute if a.name == "body"), None)
                for outer, inner in zip(node.input[2:], list(body.input[2:]) if body else []):
                    if outer in alias:
                        alias[inner.name] = alias[outer]
    return alias


def _token_bounds(proto: onnx.ModelProto, inputs: dict[str, tuple[str, tuple]]
                  ) -> tuple[dict[str, int], dict[str, int]]:
    """Integer inputs that index a table (Gather / GatherElements from a constant, or from an input
    whose indexed axis has a fixed size), directly or inside a loop body: ids < that size; and,
    for an index into another input (not an embedding's token ids), the least id, -size (ONNX
    counts negative indices from the end)."""
    tables = _constants(proto)
    alias = _aliases(proto, inputs)
    high: dict[str, int] = {}
    low: dict[str, int] = {}
    for node in (n for g in all_graphs(proto.graph) for n in g.node):
        if node.op_type not in ("Gather", "GatherElements") or len(node.input) < 2 or node.input[1] not in alias:
            continue
        root = alias[node.input[1]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        data = node.input[0]
        dims = list(tables[data].shape) if data in tables else list(inputs.get(data, ("", ()))[1])
        if dims and isinstance(dims[axis % len(dims)], int):
            rows = int(dims[axis % len(dims)])
            high[root] = min(high.get(root, rows), rows)
            if data not in tables:
                low[root] = max(low.get(root, -rows), -rows)
    return high, {k: v for k, v in low.items() if -v <= high[k]}


LOOP_COUNTS = tuple(range(1, 9))  # trip counts drawn for an input that is a Loop's M


_COMPARISONS = ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual")


def _compared_values(proto: onnx.ModelProto, inputs: dict[str, tuple[str, tuple]]) -> dict[str, tuple[int, ...]]:
    """Integer inputs compared with constants (a mode, a sample rate: `sr == 16000`): each constant
    and its neighbours, so that random draws take every branch the comparisons choose between; a
    Loop's trip count: small counts (`LOOP_COUNTS`)."""
    consts = _constants(proto)
    alias = _aliases(proto, inputs)
    found: dict[str, set[int]] = {}
    for node in (n for g in all_graphs(proto.graph) for n in g.node):
        if node.op_type == "Loop" and node.input and node.input[0] in alias:
            found.setdefault(alias[node.input[0]], set()).update(LOOP_COUNTS)
        if node.op_type not in _COMPARISONS or len(node.input) != 2:
            continue
        for mine, other in (node.input, node.input[::-1]):
            if mine in inputs and np.dtype(inputs[mine][0]).kind in "iu" and other in consts \
                    and consts[other].size == 1:
                c = int(consts[other].reshape(-1)[0])
                found.setdefault(mine, set()).update((c - 1, c, c + 1))
    return {k: tuple(sorted(v)) for k, v in found.items()}


def _length_inputs(proto: onnx.ModelProto, inputs: dict[str, tuple[str, tuple]]) -> list[str]:
    return sorted({n.input[4] for g in all_graphs(proto.graph) for n in g.node
                   if n.op_type in RECURRENT and len(n.input) > 4 and n.input[4] in inputs})


def output_infos(proto: onnx.ModelProto) -> list[TensorInfo]:
    """Output names, types and dims: as declared, else as ONNX shape inference finds them."""
    try:
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto, data_prop=True).graph.output}
    except Exception:  # noqa: BLE001 - declared shapes are enough
        inferred = {}
    outs = []
    for v in proto.graph.output:
        t = v.type.tensor_type
        unnamed = any(not d.HasField("dim_value") and not d.dim_param for d in t.shape.dim)
        if not t.HasField("shape") or unnamed:
            t = inferred.get(v.name, v).type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
        outs.append(TensorInfo(v.name, DTYPES.get(t.elem_type, "float32"), dims))
    return outs
