"""A `Model` from the user's own ONNX file: checked, shaped, made runnable by ONNX Runtime, and given
a float64 reference evaluated on the user's graph as it came (`onnx.reference` for the ordinary
operators, `rnnc.graphs.reference` for LSTM, GRU and RNN).

Which input axis is the batch and which the sequence is read off the recurrent node's `X` (axis 1
and 0 for `layout=0`, 0 and 1 for `layout=1`): each symbolic input dim is followed through ONNX
shape inference to `X`. Those two axes stay symbolic in every artifact; any other symbolic dim is
fixed by `--shapes`. A model with a symbolic dim needs `--shapes` to know what to build and verify.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from rnnc.errors import UserError
from rnnc.graphs import reference
from rnnc.graphs.model import Arrays, Model, TensorInfo

SOURCE_FILE = "source.onnx"
MIN_OPSET = 7
RECURRENT = ("LSTM", "GRU", "RNN")
# Ordinary operators a recurrent model uses around its recurrent nodes, which ONNX Runtime and
# onnx.reference both run. Anything else is refused up front, every op type named.
ORDINARY = frozenset("""
    Abs Add And ArgMax ArgMin Cast CastLike Ceil Clip Concat Constant ConstantOfShape Div Dropout
    Einsum Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements Gelu Gemm Greater
    GreaterOrEqual HardSigmoid HardSwish Identity LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax MatMul Max Mean Min Mul Neg Not Or Pad Pow PRelu Range Reciprocal ReduceL2 ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Selu Shape Sigmoid Sign Size Slice
    Softmax Softplus Softsign Split Sqrt Squeeze Sub Sum Tanh Tile Transpose Unsqueeze Where
""".split())
_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64", TensorProto.INT32: "int32"}


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """`tokens:1x64,lengths:1` -> {"tokens": (1, 64), "lengths": (1,)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    problems = []
    for item in (t.strip() for t in text.split(",")):
        name, sep, dims = item.rpartition(":")
        try:
            sizes = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            sizes = ()
        if not sep or not name or not sizes or min(sizes) < 1:
            problems.append(f"--shapes: {item!r} is not NAME:DxDx... with sizes >= 1 (e.g. tokens:1x64)")
        elif name in shapes:
            problems.append(f"--shapes: input {name!r} is given twice")
        else:
            shapes[name] = sizes
    if problems:
        raise UserError(*problems)
    return shapes


def model_from_onnx(path: str | Path, shapes: dict[str, Any] | None = None) -> Model:
    """Load, check and shape the user's ONNX model; `shapes` sizes its symbolic inputs."""
    path = Path(path)
    proto = load_checked(path)
    shapes = normal_shapes(shapes)
    name = model_name(path, "onnx-model")
    source = {"kind": "onnx", "file": SOURCE_FILE, "name": name,
              "shapes": {k: list(v) for k, v in shapes.items()} or None}
    return imported_model(proto, shapes, name, source, reference.float64_reference(proto))


def imported_model(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], name: str,
                   source: dict[str, Any], reference64: Any) -> ImportedModel:
    """A checked graph (see `check_proto`) made into a `Model` with the given reference."""
    io = _shape_inputs(proto, shapes)
    runnable = runnable_graph(proto, io.renames, {n: dims for n, (_, dims) in io.inputs.items()})
    inputs = [TensorInfo(n, dtype, dims, io.high.get(n)) for n, (dtype, dims) in io.inputs.items()]
    return ImportedModel(name=name, inputs=inputs, outputs=_outputs(runnable), onnx=runnable,
                         reference64=reference64, shapes=[io.batch_seq], source=source,
                         lengths=tuple(io.lengths))


def normal_shapes(shapes: dict[str, Any] | None) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}


@dataclass
class ImportedModel(Model):
    """A model from a file; `sequence_lens` inputs draw lengths in [1, seq] (ragged batches)."""

    lengths: tuple[str, ...] = ()

    def random_inputs(self, batch: int, seq: int, rng: np.random.Generator) -> Arrays:
        arrays = super().random_inputs(batch, seq, rng)
        for name in self.lengths:
            a = arrays[name]
            arrays[name] = rng.integers(1, seq + 1, size=a.shape).astype(a.dtype)
        return arrays


# -- loading and checking ------------------------------------------------------------------------

def load_checked(path: Path) -> onnx.ModelProto:
    """The model at `path`, at opset 7 or later, passing the full ONNX check, with nothing we refuse."""
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path}: empty file, not an ONNX model")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: not an ONNX model, or a truncated one ({first_line(err)})") from None
    if not proto.graph.node or not proto.opset_import:
        raise UserError(f"{path}: not an ONNX model, or a truncated one (no graph nodes or no opset)")
    if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise UserError(f"{path}: weights in external data files are not supported; save the model as "
                        "one file (onnx.save(onnx.load(path), out, save_as_external_data=False))")
    return check_proto(proto, str(path))


def check_proto(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """The full ONNX check, opset 7 or later, and every problem we refuse, as one `UserError`."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise UserError(f"{label}: not a valid ONNX model: {first_line(err)}") from None
    proto = _upgrade(label, proto)
    problems = _unsupported(proto) + _recurrent_problems(proto)
    if problems:
        raise UserError(*(f"{label}: {p}" for p in problems))
    return proto


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _upgrade(label: str, proto: onnx.ModelProto) -> onnx.ModelProto:
    """Opsets before 7 go to 7. ONNX's converter has no adapter for the recurrent operators, whose
    only change was dropping `output_sequence` (Y is optional by name since 7): they are carried
    over as they are, minus that attribute."""
    version = _opset(proto)
    if version >= MIN_OPSET:
        return proto
    parked = onnx.ModelProto()
    parked.CopyFrom(proto)
    for node in parked.graph.node:
        if node.op_type in RECURRENT:
            node.domain = "rnnc.parked"
    parked.opset_import.append(helper.make_opsetid("rnnc.parked", 1))
    try:
        converted = onnx.version_converter.convert_version(parked, MIN_OPSET)
    except Exception as err:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise UserError(f"{label}: opset {version} could not be converted to opset {MIN_OPSET} "
                        f"({first_line(err)})") from None
    for node in converted.graph.node:
        if node.domain == "rnnc.parked":
            node.domain = ""
            keep = [a for a in node.attribute if a.name != "output_sequence"]
            del node.attribute[:]
            node.attribute.extend(keep)
    kept = [o for o in converted.opset_import if o.domain != "rnnc.parked"]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)
    return converted


def _unsupported(proto: onnx.ModelProto) -> list[str]:
    """One line per op type we do not lower, with the names of its nodes."""
    found: dict[str, list[str]] = {}
    for i, node in enumerate(proto.graph.node):
        known = node.domain in ("", "ai.onnx") and (node.op_type in ORDINARY or node.op_type in RECURRENT)
        if not known:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            found.setdefault(op, []).append(node.name or f"#{i}")
    lines = [f"unsupported operator {op} (node{'s' if len(n) > 1 else ''} {', '.join(map(repr, n))})"
             for op, n in sorted(found.items())]
    if not any(n.op_type in RECURRENT for n in proto.graph.node):
        lines.append("no LSTM, GRU or RNN node: rnnc compiles recurrent models")
    return lines


def _recurrent_problems(proto: onnx.ModelProto) -> list[str]:
    """Attributes the reference does not implement, weights computed at run time, non-float32 X."""
    graph = proto.graph
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    problems = []
    for node in graph.node:
        if node.op_type not in RECURRENT:
            continue
        label = f"{node.op_type} node {node.name!r}"
        try:
            reference.parse_attributes(node)
        except NotImplementedError as err:
            problems.append(f"{label}: {err}")
        for k, role in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
            if k < len(node.input) and node.input[k] and _reaches_input(node.input[k], producers, inputs):
                problems.append(f"{label}: {role} ({node.input[k]!r}) must be a constant (an initializer), "
                                "not computed from the graph's inputs")
    for v in graph.input:
        t = v.type.tensor_type.elem_type
        if v.name in inputs and t not in _DTYPES:
            problems.append(f"input {v.name!r}: element type {TensorProto.DataType.Name(t)} not supported "
                            "(float32, int64 and int32 are)")
    floats = {TensorProto.DataType.Name(t.data_type) for t in graph.initializer
              if t.data_type in (TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)}
    if floats:
        problems.append(f"weights of type {', '.join(sorted(floats))}: only float32 models are supported")
    return problems


def _reaches_input(name: str, producers: dict[str, onnx.NodeProto], inputs: set[str]) -> bool:
    todo, seen = [name], set()
    while todo:
        value = todo.pop()
        if value in inputs:
            return True
        if value in seen or value not in producers:
            continue
        seen.add(value)
        todo.extend(i for i in producers[value].input if i)
    return False


# -- shapes --------------------------------------------------------------------------------------

@dataclass
class _IO:
    inputs: dict[str, tuple[str, tuple]]  # name -> (dtype, dims with "batch"/"seq" or sizes)
    renames: dict[str, str]  # symbolic dim of the file -> "batch" / "seq"
    batch_seq: tuple[int, int]
    high: dict[str, int]
    lengths: list[str]


def _shape_inputs(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> _IO:
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    unknown = sorted(set(shapes) - {v.name for v in inputs})
    if unknown:
        raise UserError(f"--shapes: no input named {', '.join(map(repr, unknown))}; the model's inputs are "
                        f"{', '.join(repr(v.name) for v in inputs)}")
    tagged = onnx.ModelProto()
    tagged.CopyFrom(proto)
    declared: dict[str, list] = {}
    for k, v in enumerate(i for i in tagged.graph.input if i.name not in initializers):
        dims = []
        if v.type.tensor_type.HasField("shape"):
            for axis, d in enumerate(v.type.tensor_type.shape.dim):
                if not d.HasField("dim_value") and not d.dim_param:
                    d.dim_param = f"rnnc.{k}.{axis}"  # unnamed: tag it, to follow it to X
                dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param)
        else:
            dims = None
        declared[v.name] = dims
    roles, static = _batch_seq_axes(tagged)
    _same_axis_roles(roles, declared, shapes)

    problems, sizes = [], {}  # sizes: symbol or role -> size given by --shapes
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

    result: dict[str, tuple[str, tuple]] = {}
    for v in inputs:
        dims = declared[v.name]
        if dims is None and v.name not in shapes:
            problems.append(f"input {v.name!r} has no shape in the model; give it, e.g. --shapes {v.name}:1x16")
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
            example = "x".join(str(sizes.get(d, {"batch": 1, "seq": 16}.get(d, 8))) if isinstance(d, str) or d is None
                               else str(d) for d in out)
            shown = ", ".join("?" if d is None else str(d) for d in out)
            problems.append(f"input {v.name!r} has a symbolic dim ([{shown}]); give --shapes {v.name}:{example}")
            continue
        result[v.name] = (_DTYPES[v.type.tensor_type.elem_type], tuple(out))
    if problems:
        raise UserError(*problems)
    batch = sizes.get("batch", static.get("batch"))
    seq = sizes.get("seq", static.get("seq"))
    renames = {sym: role for sym, role in roles.items() if not sym.startswith("rnnc.")}
    return _IO(result, renames, (int(batch or 1), int(seq or 1)), _token_bounds(proto, result),
               _length_inputs(proto, result))


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
    shapes = {v.name: v.type.tensor_type.shape for v in
              list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)}
    roles: dict[str, str] = {}
    static: dict[str, int] = {}
    for node in inferred.graph.node:
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


def _token_bounds(proto: onnx.ModelProto, inputs: dict[str, tuple[str, tuple]]) -> dict[str, int]:
    """Integer inputs that index an embedding table (Gather from an initializer): ids < table rows."""
    tables = {t.name: t for t in proto.graph.initializer}
    high = {}
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in inputs \
                and node.input[0] in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            rows = tables[node.input[0]].dims[axis]
            high[node.input[1]] = min(high.get(node.input[1], rows), rows)
    return high


def _length_inputs(proto: onnx.ModelProto, inputs: dict[str, tuple[str, tuple]]) -> list[str]:
    return sorted({n.input[4] for n in proto.graph.node
                   if n.op_type in RECURRENT and len(n.input) > 4 and n.input[4] in inputs})


def _outputs(proto: onnx.ModelProto) -> list[TensorInfo]:
    """Output names, types and dims: as declared, else as ONNX shape inference finds them."""
    try:
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto, data_prop=True).graph.output}
    except Exception:  # noqa: BLE001 - declared shapes are enough
        inferred = {}
    outs = []
    for v in proto.graph.output:
        t = v.type.tensor_type
        if not t.HasField("shape") or any(not d.HasField("dim_value") and not d.dim_param for d in t.shape.dim):
            t = inferred.get(v.name, v).type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
        outs.append(TensorInfo(v.name, _DTYPES.get(t.elem_type, "float32"), dims))
    return outs


def model_name(path: Path, fallback: str) -> str:
    """The file's stem as a model name (a rebuilt model takes the name its manifest recorded)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")
    return name if re.match(r"[a-z0-9]", name or "") else fallback


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# -- the graph ONNX Runtime (and every lowering) runs ---------------------------------------------

def runnable_graph(proto: onnx.ModelProto, renames: dict[str, str], input_dims: dict[str, tuple]
                   ) -> onnx.ModelProto:
    """The user's graph with batch and sequence dims named `batch` and `seq`, other symbolic input
    dims fixed by --shapes, and the recurrent nodes put in a form ONNX Runtime 1.32 accepts:
    `layout=1` becomes `layout=0` between Transposes (ORT refuses batch-major recurrent nodes),
    activation alpha/beta are spelled out where ORT's defaults differ from the operators', and a
    missing `hidden_size` is written (ORT requires it). See `_simplify` for the rest."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
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
    nodes = []
    for node in graph.node:
        if node.op_type in RECURRENT:
            _explicit_activation_attributes(node)
            nodes.extend(_time_major(node))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _simplify(out)
    _name_hidden_size(graph)
    graph.ClearField("value_info")  # shapes of rewritten values changed; ORT infers them again
    onnx.checker.check_model(out, full_check=True)
    return out


def _name_hidden_size(graph: onnx.GraphProto) -> None:
    """`hidden_size` is optional in ONNX (R's last dim) but required by ONNX Runtime: write it."""
    weights = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type in RECURRENT and not any(a.name == "hidden_size" for a in node.attribute):
            if node.input[2] not in weights:
                raise ValueError(f"{node.op_type} node {node.name!r}: R {node.input[2]!r} is not constant")
            node.attribute.append(helper.make_attribute("hidden_size", int(weights[node.input[2]].dims[-1])))


def _simplify(proto: onnx.ModelProto) -> None:
    """Rewrites that keep the meaning and spare every lowering some operators: Constant nodes become
    initializers, all-zero initial states (exporters compute them from the batch size with Shape and
    ConstantOfShape) become omitted inputs, which the operators define as zeros, and nodes whose
    outputs nobody reads go."""
    graph = proto.graph
    if proto.ir_version >= 4:  # from IR 4 on, initializers need not be graph inputs
        kept = []
        for node in graph.node:
            value = _constant_value(node)
            if value is None:
                kept.append(node)
            else:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        del graph.node[:]
        graph.node.extend(kept)
        _fold_casts(graph)
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
            del node.input[:]
            node.input.extend(inputs)
    _drop_dead(graph)


def _fold_casts(graph: onnx.GraphProto) -> None:
    """Cast of an initializer -> an initializer of the target type (exporters cast Python scalars)."""
    values = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in values and len(node.attribute) == 1:
            to = helper.tensor_dtype_to_np_dtype(node.attribute[0].i)
            array = numpy_helper.to_array(values[node.input[0]]).astype(to)
            values[node.output[0]] = numpy_helper.from_array(array, node.output[0])
            graph.initializer.append(values[node.output[0]])
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    simple = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    return np.array(helper.get_attribute_value(a), dtype=simple[a.name]) if a.name in simple else None


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


def _drop_dead(graph: onnx.GraphProto) -> None:
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        live = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    inputs = {i.name for i in graph.input}
    kept = [t for t in graph.initializer if t.name in used or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)


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
    del node.attribute[:]
    node.attribute.extend(keep)
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
    del node.input[:], node.output[:]
    node.input.extend(inputs)
    node.output.extend(outputs)
    return before + [node] + after
