"""A `Model` from the user's own ONNX file: checked, shaped, made runnable by ONNX Runtime, and given
a float64 reference evaluated on the user's graph as it came (`onnx.reference` for the ordinary
operators, `rnnc.graphs.reference` for LSTM, GRU and RNN).

Here: loading and checking the file, and assembling the `Model`. Which input axes are batch and
sequence, and the sizes --shapes gives the rest, is `onnx_shapes`; the rewrite into the graph ONNX
Runtime runs and TVM lowers is `onnx_rewrite`. `from_torchscript` checks and assembles its exported
graph with the same functions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper
from onnx.reference.ops import load_op

from rnnc.errors import UserError
from rnnc.graphs import reference
from rnnc.graphs.bind import bind_inputs, bind_record
from rnnc.graphs.model import Arrays, Model, TensorInfo
from rnnc.graphs.onnx_rewrite import replace_field, runnable_graph
from rnnc.graphs.onnx_shapes import DTYPES, RECURRENT, output_infos, shape_inputs
from rnnc.graphs.state import state_pairs
from rnnc.graphs.walk import all_graphs, all_nodes

SOURCE_FILE = "source.onnx"
MIN_OPSET = 7
STANDARD = ("", "ai.onnx")


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


def model_from_onnx(path: str | Path, shapes: dict[str, Any] | None = None,
                    bind: dict[str, np.ndarray] | None = None, state: dict[str, str] | None = None) -> Model:
    """Load, check and shape the user's ONNX model; `shapes` sizes its symbolic inputs, `bind`
    fixes inputs to constants (`--bind`), `state` pairs state inputs with outputs (`--state`)."""
    path = Path(path)
    proto = load_checked(path)
    shapes = normal_shapes(shapes)
    name = model_name(path, "onnx-model")
    source = {"kind": "onnx", "file": SOURCE_FILE, "name": name,
              "shapes": {k: list(v) for k, v in shapes.items()} or None}
    model = imported_model(proto, shapes, name, source, reference.float64_reference(proto), bind=bind, state=state)
    model.origin = path
    return model


def imported_model(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], name: str,
                   source: dict[str, Any], reference64: Any, *, bind: dict[str, np.ndarray] | None = None,
                   state: dict[str, str] | None = None) -> ImportedModel:
    """A checked graph (see `check_proto`) made into a `Model` with the given reference (of the
    graph as given: bound inputs are fed to it as inputs, so the folding is verified too)."""
    bind = dict(bind or {})
    if bind:
        proto = bind_inputs(proto, bind)
        source = {**source, "bind": bind_record(bind)}
        reference64 = _with_bound(reference64, bind)
    io = shape_inputs(proto, shapes)
    runnable = runnable_graph(proto, io.renames, {n: dims for n, (_, dims) in io.inputs.items()})
    inputs = [TensorInfo(n, dtype, dims, io.high.get(n), io.values.get(n), io.low.get(n))
              for n, (dtype, dims) in io.inputs.items()]
    _drawable(inputs, set(io.lengths))
    outputs = output_infos(runnable)
    pairs = state_pairs(inputs, outputs, state)
    if state:
        source = {**source, "state": dict(state)}
    return ImportedModel(name=name, inputs=inputs, outputs=outputs, onnx=runnable,
                         reference64=reference64, shapes=[io.batch_seq], source=source,
                         dtype=_float_type(proto), state=pairs, lengths=tuple(io.lengths))


def _with_bound(reference64: Any, bound: dict[str, np.ndarray]) -> Any:
    def bound_reference(arrays: Arrays) -> Arrays:
        return reference64({**arrays, **bound})

    return bound_reference


def _drawable(inputs: list[TensorInfo], lengths: set[str]) -> None:
    """Integer inputs must have values rnnc can draw for verification: ids below a table's size,
    sequence lengths, or the constants the model compares them with. Others (a sample rate used
    in arithmetic, a count) only take values the model's author knows: they must be bound."""
    problems = [f"input {t.name!r} ({t.dtype} [{', '.join(map(str, t.dims))}]): rnnc cannot tell which values "
                f"it takes (it indexes no table and is compared with no constant); fix it at compile time "
                f"with --bind {t.name}=VALUE"
                for t in inputs if np.dtype(t.dtype).kind in "iu" and t.high is None and not t.values
                and t.name not in lengths]
    if problems:
        raise UserError(*problems)


def _float_type(proto: onnx.ModelProto) -> str:
    """float16 where the model's weights or inputs are float16 (a half-precision export)."""
    halves = any(t.data_type == TensorProto.FLOAT16 for g in all_graphs(proto.graph) for t in g.initializer) or any(
        v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in proto.graph.input)
    return "float16" if halves else "float32"


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
    problems = _unsupported(proto) + _recurrent_problems(proto) + _branch_problems(proto)
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
            replace_field(node.attribute, [a for a in node.attribute if a.name != "output_sequence"])
    replace_field(converted.opset_import, [o for o in converted.opset_import if o.domain != "rnnc.parked"])
    return converted


def _unsupported(proto: onnx.ModelProto) -> list[str]:
    """One line per op type that neither the float64 reference (onnx.reference, and ours for the
    recurrent operators) nor so any verification can take, with the names of its nodes. Whether a
    backend takes an op is that backend's decision, in its build."""
    found: dict[str, list[str]] = {}
    for i, node in enumerate(all_nodes(proto.graph)):
        if node.domain in STANDARD and (node.op_type in RECURRENT or _referenced(node.op_type, _opset(proto))):
            continue
        op = node.op_type if node.domain in STANDARD else f"{node.domain}.{node.op_type}"
        found.setdefault(op, []).append(node.name or f"#{i}")
    return [f"unsupported operator {op} (node{'s' if len(n) > 1 else ''} {', '.join(map(repr, n[:5]))}"
            f"{' ...' if len(n) > 5 else ''}): no float64 reference implements it, so no backend could be verified"
            for op, n in sorted(found.items())]


def _branch_problems(proto: onnx.ModelProto) -> list[str]:
    """Ifs whose branches disagree on an output's element type, rank or a fixed size: no artifact
    can give such an output one type (ONNX lets fixed sizes differ; rnnc's artifacts cannot)."""
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - the declared branch outputs are enough
        pass
    problems = []
    for node in all_nodes(proto.graph):
        if node.op_type != "If" or node.domain not in STANDARD:
            continue
        branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
        then, other = branches.get("then_branch"), branches.get("else_branch")
        if then is None or other is None:
            continue
        for k, (a, b) in enumerate(zip(then.output, other.output)):
            ta, tb = _shown_type(a), _shown_type(b)
            if ta and tb and not _agree(ta, tb):
                problems.append(f"If node {node.name!r}: output {k} is {_text(ta)} in then_branch but {_text(tb)} in "
                                "else_branch; the branches must agree in type and shape")
    return problems


def _shown_type(value: onnx.ValueInfoProto) -> tuple[int, list | None] | None:
    t = value.type.tensor_type if value.type.WhichOneof("value") == "tensor_type" else None
    if t is None or not t.elem_type:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim] \
        if t.HasField("shape") else None
    return t.elem_type, dims


def _agree(a: tuple[int, list | None], b: tuple[int, list | None]) -> bool:
    if a[0] != b[0]:
        return False
    if a[1] is None or b[1] is None:
        return True
    return len(a[1]) == len(b[1]) and all(x == y or not (isinstance(x, int) and isinstance(y, int))
                                          for x, y in zip(a[1], b[1]))


def _text(t: tuple[int, list | None]) -> str:
    dims = "?" if t[1] is None else f"[{', '.join(map(str, t[1]))}]"
    return f"{helper.tensor_dtype_to_np_dtype(t[0]).name} {dims}"


def _referenced(op_type: str, opset: int) -> bool:
    """Whether onnx.reference evaluates the op: a kernel of its own, or the function body the
    operator's schema defines (Gelu, HardSwish, GroupNormalization, ...), which it expands."""
    try:
        load_op("", op_type, opset)
        return True
    except Exception:  # noqa: BLE001 - onnx raises NotImplementedError or RuntimeError, by version
        pass
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except Exception:  # noqa: BLE001 - no such op at this opset
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _recurrent_problems(proto: onnx.ModelProto) -> list[str]:
    """Attributes the reference does not implement, and inputs of types no reference can feed."""
    graph = proto.graph
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    problems = []
    for node in all_nodes(graph):
        if node.op_type not in RECURRENT or node.domain not in STANDARD:
            continue
        try:
            reference.parse_attributes(node)
        except NotImplementedError as err:
            problems.append(f"{node.op_type} node {node.name!r}: {err}")
    for v in graph.input:
        kind = v.type.WhichOneof("value")
        if v.name not in inputs:
            continue
        if kind != "tensor_type":
            problems.append(f"input {v.name!r}: a {kind or 'typeless'} input; rnnc takes tensors")
        elif v.type.tensor_type.elem_type not in DTYPES:
            t = TensorProto.DataType.Name(v.type.tensor_type.elem_type)
            problems.append(f"input {v.name!r}: element type {t} not supported "
                            f"({', '.join(sorted(set(DTYPES.values())))} are)")
    for v in graph.output:
        if v.type.WhichOneof("value") != "tensor_type":
            problems.append(f"output {v.name!r}: not a tensor; rnnc compares tensors")
    return problems


def model_name(path: Path, fallback: str) -> str:
    """The file's stem as a model name (a rebuilt model takes the name its manifest recorded)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")
    return name if re.match(r"[a-z0-9]", name or "") else fallback


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
