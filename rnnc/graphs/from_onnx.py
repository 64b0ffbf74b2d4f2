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

from rnnc.errors import UserError
from rnnc.graphs import reference
from rnnc.graphs.model import Arrays, Model, TensorInfo
from rnnc.graphs.onnx_rewrite import replace_field, runnable_graph
from rnnc.graphs.onnx_shapes import DTYPES, RECURRENT, output_infos, shape_inputs

SOURCE_FILE = "source.onnx"
MIN_OPSET = 7
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
    model = imported_model(proto, shapes, name, source, reference.float64_reference(proto))
    model.origin = path
    return model


def imported_model(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], name: str,
                   source: dict[str, Any], reference64: Any) -> ImportedModel:
    """A checked graph (see `check_proto`) made into a `Model` with the given reference."""
    io = shape_inputs(proto, shapes)
    runnable = runnable_graph(proto, io.renames, {n: dims for n, (_, dims) in io.inputs.items()})
    inputs = [TensorInfo(n, dtype, dims, io.high.get(n)) for n, (dtype, dims) in io.inputs.items()]
    return ImportedModel(name=name, inputs=inputs, outputs=output_infos(runnable), onnx=runnable,
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
            replace_field(node.attribute, [a for a in node.attribute if a.name != "output_sequence"])
    replace_field(converted.opset_import, [o for o in converted.opset_import if o.domain != "rnnc.parked"])
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
        if v.name in inputs and t not in DTYPES:
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


def model_name(path: Path, fallback: str) -> str:
    """The file's stem as a model name (a rebuilt model takes the name its manifest recorded)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")
    return name if re.match(r"[a-z0-9]", name or "") else fallback


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
