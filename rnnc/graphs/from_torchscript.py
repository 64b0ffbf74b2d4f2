"""A `Model` from a saved TorchScript module (nn.RNN / LSTM / GRU, Embedding, Linear, activations).

TorchScript keeps no input shapes, so every free tensor argument of `forward` is named in
`--shapes`. `--bind NAME=VALUE` fixes an argument (a tensor, or a Python int / float / bool such
as a sample rate that forward branches on) to a constant: the example run, the ONNX export, the
float64 reference and the torchscript artifact all take only the remaining arguments. Which
inputs are token ids: an argument that `forward` passes, as it is, as the indices of an embedding
(`nn.Embedding`, `F.embedding`) is int64 with ids below that table's row count; every other
argument is float32.

The reference is the same file loaded again and converted with `.double()` (a traced module,
whose constants keep the dtype it was traced with, cannot run so: its reference is then the
exported graph in float64, evaluated as for an ONNX file). The ONNX graph every other backend
starts from comes from torch.onnx's TorchScript exporter (`dynamo=False`, which keeps ONNX's own
LSTM / GRU / RNN nodes), with every input axis exported symbolic so that `from_onnx` finds the
batch and sequence axes on the recurrent node's X and fixes the others to the sizes given.

Where there can be no honest ONNX graph, the model is imported without one (`model.onnx` is None,
`model.extra["no_onnx"]` says why) and only the torchscript backend builds: the exporter fails
(an operator without an ONNX symbolic, ...), its graph is one rnnc does not lower, or forward
keeps state in attributes (`self.h = h`), which an export would freeze to its value at export
time, so that the graph would differ from calling the module twice.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import onnx
import torch

from rnnc.errors import UserError
from rnnc.graphs.from_onnx import (check_proto, imported_model, first_line,
                                   model_name, normal_shapes)
from rnnc.graphs import reference
from rnnc.graphs.model import Arrays, Model, TensorInfo
from rnnc.graphs.state import state_pairs

SOURCE_FILE = "source.ts"
OPSET = 17
_SCALARS = {"int": "iu", "float": "iuf", "bool": "biu"}  # argument type -> numpy kinds it takes (bool: 0 or 1 too)
_RECURRENT = ("aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu")
_VIEWS = frozenset(f"aten::{op}" for op in "select slice narrow view reshape squeeze unsqueeze transpose "
                   "permute t expand as_strided detach alias index flatten contiguous".split())


def model_from_torchscript(path: str | Path, shapes: dict[str, Any] | None = None,
                           bind: dict[str, np.ndarray] | None = None, state: dict[str, str] | None = None) -> Model:
    """Load the ScriptModule at `path`; `shapes` gives every free tensor argument's shape by name,
    `bind` fixes arguments to constants (they are then no input of any artifact)."""
    path = Path(path)
    module = _load(path)
    arguments = module.forward.schema.arguments[1:]
    bound = bound_values(module, bind)
    names = [a.name for a in arguments if a.name not in bound and not a.has_default_value()]
    shapes = normal_shapes(shapes)
    _check_arguments(path, arguments, names, bound, shapes)
    tables = _token_inputs(module, names)
    example = [_example(shapes[n], tables.get(n)) for n in names]
    outputs, probe, stateful = _run_example(path, names, example, bound, module)
    out_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]

    proto, no_onnx = None, stateful
    if no_onnx is None:
        proto, no_onnx = _onnx_graph(path, module, names, example, bound, out_names)
    reference64 = _float64_module(path, names, tables, out_names, example, bound)
    how = "the module in float64"
    if reference64 is None and proto is None:
        raise UserError(f"{path}: no float64 reference: the module cannot run in float64 and has no "
                        f"ONNX graph ({no_onnx})")
    if reference64 is None:  # e.g. traced: nn.LSTM's zero state is a float32 constant in the trace
        reference64 = reference.float64_reference(proto)
        how = "the exported graph in float64 (the module cannot run in float64)"
    name = model_name(path, "torchscript-model")
    source: dict[str, Any] = {"kind": "torchscript", "file": SOURCE_FILE, "name": name,
                              "shapes": {k: list(v) for k, v in shapes.items()}}
    if bound:
        source["bind"] = {n: {"dtype": str(a.dtype), "shape": list(a.shape), "value": a.tolist()}
                          for n, a in bound.items()}
    if proto is not None:
        model = imported_model(proto, shapes, name, source, reference64, state=state)
    else:
        inputs, outs, batch_seq = _io_without_onnx(module, names, example, tables, outputs, probe, bound)
        if state:  # the pairs are checked and recorded as for a model with a graph
            source["state"] = dict(state)
        model = Model(name=name, inputs=inputs, outputs=outs, onnx=None, reference64=reference64,
                      shapes=[batch_seq], source=source, state=state_pairs(inputs, outs, state))
        model.extra["no_onnx"] = no_onnx
    model.extra["reference"] = how
    model.origin = path
    return model


def recorded_bind(source: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays a manifest's `source["bind"]` records (None when nothing was bound)."""
    record = source.get("bind")
    if not record:
        return None
    return {n: np.array(v["value"], dtype=v["dtype"]).reshape(v.get("shape", np.shape(v["value"])))
            for n, v in record.items()}


def bound_script(path: Path, bind: dict[str, np.ndarray]) -> torch.jit.ScriptModule:
    """The module at `path` with the `bind` arguments fixed: a ScriptModule whose forward takes
    only the free tensor arguments (the torchscript backend saves it as model.ts)."""
    module = _load(path)
    bound = bound_values(module, bind)
    free = [a.name for a in module.forward.schema.arguments[1:] if a.name not in bound and not a.has_default_value()]
    return _Bound(module, free, _arguments(module, bound, torch.float32))


def bound_values(module: torch.jit.ScriptModule, bind: dict[str, Any] | None) -> Arrays:
    """`bind` checked against forward's schema: every name an argument, every value of its type."""
    arguments = {a.name: a for a in module.forward.schema.arguments[1:]}
    problems, bound = [], {}
    for name, value in (bind or {}).items():
        if name not in arguments:
            problems.append(f"--bind: {name!r} is not an argument of forward({', '.join(arguments)})")
            continue
        array = np.asarray(value)
        if problem := _bind_problem(_kind(arguments[name].type), array):
            problems.append(f"--bind {name}: {problem}")
        bound[name] = array
    if problems:
        raise UserError(*problems)
    return bound


def _bind_problem(kind: str, array: np.ndarray) -> str | None:
    """Why `array` cannot be the value of an argument of type `kind`, or None."""
    article = "an" if kind == "int" else "a"
    if kind == "Tensor":
        return None if array.dtype.kind in "biuf" else f"forward takes a tensor of numbers, got {array.dtype}"
    if kind not in _SCALARS:
        return f"forward takes {kind}; --bind fixes tensors, int, float and bool"
    if array.ndim != 0:
        return f"forward takes one {kind}, got an array of shape {tuple(array.shape)}"
    if array.dtype.kind not in _SCALARS[kind] or (kind == "bool" and array.item() not in (0, 1)):
        got = {"b": "a bool", "f": "a float", "i": "an int", "u": "an int"}.get(array.dtype.kind, str(array.dtype))
        return f"forward takes {article} {kind}, got {got} ({array.item()!r})"
    return None


def _kind(arg_type: Any) -> str:
    """`Tensor`, `int`, `float`, `bool` or the annotation of anything else (Optional unwrapped)."""
    if isinstance(arg_type, torch.OptionalType):
        arg_type = arg_type.getElementType()
    if isinstance(arg_type, torch.TensorType):
        return "Tensor"
    return str(arg_type)


def _check_arguments(path: Path, arguments: list[Any], names: list[str], bound: Arrays,
                     shapes: dict[str, tuple[int, ...]]) -> None:
    """--shapes names free tensor arguments only; every free argument is a tensor with a shape."""
    every = ", ".join(a.name for a in arguments)
    problems = [f"--shapes: {n!r} is fixed by --bind, its shape is the value's" if n in bound else
                f"--shapes: {n!r} is not an argument of forward({every})" for n in shapes if n not in names]
    for i, a in enumerate(a for a in arguments if a.name in names):
        kind = _kind(a.type)
        if kind != "Tensor":
            problems.append(f"{path}: forward argument {a.name!r} is {'an' if kind == 'int' else 'a'} {kind}, "
                            f"not a tensor: fix it with --bind {a.name}=VALUE")
        elif a.name not in shapes:
            problems.append(f"input {a.name!r} has no shape in TorchScript; give --shapes {a.name}:1x16"
                            f"{'x8' if i else ''}")
    if problems:
        raise UserError(*problems)


# -- running the module --------------------------------------------------------------------------

def _call(module: Any, names: list[str], tensors: list[torch.Tensor], bound: dict[str, Any]) -> list[Any]:
    with torch.inference_mode():
        return _flatten(module(**dict(zip(names, tensors)), **bound))


def _run_example(path: Path, names: list[str], example: list[torch.Tensor], bound: Arrays,
                 module: torch.jit.ScriptModule) -> tuple[list[torch.Tensor], Any, str | None]:
    """The outputs of forward on the example, a copy of the module that ran it (twice), and why an
    ONNX graph would not be honest about the module's state (None when it keeps none)."""
    probe = _load(path)
    kwargs = _arguments(probe, bound, torch.float32)
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    try:
        outputs = _call(probe, names, example, kwargs)
    except Exception as err:  # noqa: BLE001 - whatever forward raises is the user's message
        raise UserError(f"{path}: forward raised on inputs of the --shapes given: {module_message(err)}") from None
    if not outputs or not all(isinstance(o, torch.Tensor) for o in outputs):
        raise UserError(f"{path}: forward must return a tensor or (nested) tuples of tensors")
    after = probe.state_dict()
    changed = [k for k, v in before.items() if k in after and not torch.equal(v, after[k])]
    writes = _attribute_writes(_frozen_graph(module))
    try:
        again = _call(probe, names, example, kwargs)
        differs = len(again) != len(outputs) or not all(torch.equal(a, b) for a, b in zip(outputs, again))
    except Exception:  # noqa: BLE001 - a second call that fails: state the first one left
        differs = True
    why = None
    if writes or changed:
        what = ", ".join(f"self.{w}" for w in dict.fromkeys(writes or changed))
        why = (f"forward updates {what} (state kept in attributes): an ONNX graph would freeze it to "
               "its value at export, unlike calling the module again")
    elif differs:
        why = "forward gives different outputs on two calls with the same inputs (state or randomness)"
    return outputs, probe, why


def _frozen_graph(module: torch.jit.ScriptModule) -> torch._C.Graph:
    """forward's graph with `self.training` (False) folded in, so that what only training does
    (BatchNorm counting its batches) is gone, and every attribute forward writes still read and
    written as one: torch.jit.freeze keeps those. The inlined graph where freezing fails."""
    try:
        return torch.jit.freeze(module, optimize_numerics=False).graph
    except Exception:  # noqa: BLE001 - freezing is an aid here, not a requirement
        return module.inlined_graph


def _attribute_writes(graph: torch._C.Graph) -> list[str]:
    """Attributes forward assigns (prim::SetAttr) or changes in place (`self.h.copy_(...)`)."""
    found = [n.s("name") for n in graph.findAllNodes("prim::SetAttr", True)]
    for node in _all_nodes(graph.block()):
        kind = node.kind()
        if not kind.startswith("aten::") or not kind.endswith("_") or kind.endswith("__"):
            continue
        value = next(iter(node.inputs()), None)
        while value is not None and value.node().kind() in _VIEWS:
            value = next(iter(value.node().inputs()))
        if value is not None and value.node().kind() == "prim::GetAttr":
            found.append(value.node().s("name"))
    return found


def _all_nodes(block: Any) -> list[Any]:
    nodes = []
    for node in block.nodes():
        nodes.append(node)
        for inner in node.blocks():
            nodes.extend(_all_nodes(inner))
    return nodes


def module_message(err: BaseException) -> str:
    """What the module itself raised, on one line: TorchScript wraps it in its own traceback,
    after which comes `RuntimeError: AssertionError: ...` or `builtins.ValueError: ...`."""
    text = str(err)
    if "Traceback of TorchScript" in text:
        lines = text.splitlines()
        here = max((i for i, line in enumerate(lines) if "<--- HERE" in line), default=-1)
        rest = [line for line in lines[here + 1:] if line.strip() and not line.startswith(" ")]
        text = rest[0] if rest else text
    else:
        text = first_line(err)
        if not text.startswith(type(err).__name__):
            text = f"{type(err).__name__}: {text}"
    text = re.sub(r"^RuntimeError: (?=[\w.]+(Error|Exception)\b)", "", text.strip())
    text = re.sub(r"^builtins\.", "", text)
    return text.rstrip(": ") or type(err).__name__


# -- the ONNX graph ------------------------------------------------------------------------------

def _onnx_graph(path: Path, module: torch.jit.ScriptModule, names: list[str], example: list[torch.Tensor],
                bound: Arrays, out_names: list[str]) -> tuple[onnx.ModelProto | None, str | None]:
    """The exported, checked graph, or None and why there is none (one line)."""
    arguments = module.forward.schema.arguments[1:]
    defaults = {a.name: a.default_value for a in arguments if a.has_default_value() and a.name not in bound}
    direct = not bound and all(v is not None for v in defaults.values())
    try:
        if direct:
            proto = _export(module, example, names, defaults, out_names)
        else:  # the constants inside: the exporter folds the branches they decide
            wrapper = _Bound(module, names, _arguments(module, bound, torch.float32))
            proto = _export(wrapper, example, names, {}, out_names)
            for node in proto.graph.node:  # named as the module's own export names them
                node.name = re.sub(r"^/inner(?=/)", "", node.name)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; all mean "cannot export"
        return None, f"torch.onnx cannot export it ({type(err).__name__}: {first_line(err)})"
    try:
        return check_proto(proto, f"{path} (as ONNX)"), None
    except UserError as err:
        if not _has_recurrent(proto.graph):
            raise  # not a recurrent model: refused as an ONNX file would be
        return None, "the exported graph is not one rnnc lowers: " + "; ".join(
            p.removeprefix(f"{path} (as ONNX): ") for p in err.problems)


def _has_recurrent(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN"):
            return True
        if any(_has_recurrent(g) for a in node.attribute for g in [*a.graphs, *([a.g] if a.HasField("g") else [])]):
            return True
    return False


def _export(module: torch.jit.ScriptModule, example: list[torch.Tensor], names: list[str],
            defaults: dict[str, Any], out_names: list[str]) -> onnx.ModelProto:
    """torch.onnx's TorchScript exporter, every input axis symbolic. Arguments with a default are
    passed it; the exporter makes them graph inputs, which become constants holding the default."""
    axes = {n: {k: f"{n}_{k}" for k in range(t.dim())} for n, t in zip(names, example)}  # all symbolic
    buffer = io.BytesIO()
    # torch.onnx always turns its log on (it tests the function `_jit_is_onnx_log_enabled`, not its
    # value) and prints the whole TorchScript graph to stdout when an export fails: silenced here.
    with warnings.catch_warnings(), mock.patch.object(torch._C, "_jit_onnx_log", lambda *args: None):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(example) + tuple(defaults.values()), buffer, dynamo=False,
                          input_names=names + list(defaults), output_names=out_names, dynamic_axes=axes,
                          opset_version=OPSET)
    proto = onnx.load_model_from_string(buffer.getvalue())
    for value in [v for v in proto.graph.input if v.name in defaults]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        readers = [n for n in proto.graph.node if value.name in n.input]
        if dtype == np.float64 and all(n.op_type == "Cast" for n in readers):
            dtype = np.float32  # a Python float: only ever cast, keep the graph float32
        proto.graph.input.remove(value)
        constant = np.array(defaults[value.name], dtype)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(constant, value.name))
    return proto


class _Bound(torch.jit.ScriptModule):
    """forward(free tensors) -> inner(free tensors, bound constants): bound tensors are buffers
    (so that `.to(device)` moves them), bound scalars literals in the method's source."""

    def __init__(self, inner: torch.jit.ScriptModule, free: list[str], values: dict[str, Any]) -> None:
        super().__init__()
        self.inner = inner
        args = [f"{n}={n}" for n in free]
        for i, (name, value) in enumerate(values.items()):
            if isinstance(value, torch.Tensor):
                self.register_buffer(f"bound_{i}", value)
                args.append(f"{name}=self.bound_{i}")
            else:
                args.append(f"{name}={_literal(value)}")
        params = "".join(f", {n}: Tensor" for n in free)
        self.define(f"def forward(self{params}):\n    return self.inner({', '.join(args)})\n")


def _literal(value: bool | int | float) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return f'float("{value}")'
    return repr(value)


def _arguments(module: torch.jit.ScriptModule, bound: Arrays, float_dtype: torch.dtype) -> dict[str, Any]:
    """Bound arrays as forward takes them: Python scalars for int / float / bool arguments, tensors
    (floating point ones in `float_dtype`) for tensor arguments."""
    kinds = {a.name: _kind(a.type) for a in module.forward.schema.arguments[1:]}
    values: dict[str, Any] = {}
    for name, array in bound.items():
        if kinds[name] in _SCALARS:
            values[name] = {"int": int, "float": float, "bool": bool}[kinds[name]](array.item())
        else:
            tensor = torch.from_numpy(np.array(array))
            values[name] = tensor.to(float_dtype) if tensor.is_floating_point() else tensor
    return values


# -- the model's inputs and outputs without an ONNX graph ----------------------------------------

def _io_without_onnx(module: torch.jit.ScriptModule, names: list[str], example: list[torch.Tensor],
                     tables: dict[str, int], outputs: list[torch.Tensor], probe: Any, bound: dict[str, Any]
                     ) -> tuple[list[TensorInfo], list[TensorInfo], tuple[int, int]]:
    """Inputs and outputs with their batch and sequence axes, found without ONNX: the recurrent
    op's `batch_first` places them on the first input of rank >= 2 (batch first where forward has
    no such op); another input has them where its sizes match. The module is then run once more
    at batch + 1 and sequence + 2: an output axis that grew by 1 is the batch, by 2 the sequence.
    Where that run fails, every axis is fixed to the sizes given."""
    first = next((t for t in example if t.dim() >= 2), None)
    batch_axis, seq_axis = (0, 1) if _batch_first(module) is not False else (1, 0)
    if first is None:
        roles: list[dict[int, str]] = [{} for _ in example]
        batch, seq = 1, 1
    else:
        batch, seq = int(first.shape[batch_axis]), int(first.shape[seq_axis])
        roles = [_axis_roles(tuple(t.shape), batch_axis, seq_axis, batch, seq) for t in example]
    grown = [_example(tuple(size + {"batch": 1, "seq": 2}.get(r.get(k, ""), 0) for k, size in enumerate(t.shape)),
                      tables.get(n)) for n, t, r in zip(names, example, roles)]
    try:
        bigger = _call(probe, names, grown, _arguments(probe, bound, torch.float32)) if any(roles) else None
    except Exception:  # noqa: BLE001 - it runs at the sizes given only
        bigger = None
    if bigger is None or len(bigger) != len(outputs) or any(b.dim() != o.dim() for b, o in zip(bigger, outputs)):
        roles, bigger = [{} for _ in example], outputs
    inputs = [TensorInfo(n, "int64" if n in tables else "float32",
                         tuple(r.get(k, int(d)) for k, d in enumerate(t.shape)), tables.get(n))
              for n, t, r in zip(names, example, roles)]
    step = {0: None, 1: "batch", 2: "seq"}
    out_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    outs = [TensorInfo(n, str(o.numpy().dtype) if not o.is_floating_point() else "float32",
                       tuple(step.get(int(b) - int(d), "?") or int(d) for d, b in zip(o.shape, g.shape)))
            for n, o, g in zip(out_names, outputs, bigger)]
    return inputs, outs, (batch, seq)


def _axis_roles(shape: tuple[int, ...], batch_axis: int, seq_axis: int, batch: int, seq: int) -> dict[int, str]:
    if len(shape) >= 2 and shape[batch_axis] == batch and shape[seq_axis] == seq:
        return {batch_axis: "batch", seq_axis: "seq"}
    return {shape.index(batch): "batch"} if batch in shape else {}


def _batch_first(module: torch.jit.ScriptModule) -> bool | None:
    """`batch_first` of forward's recurrent ops when they agree on a constant one, else None."""
    found, graph = set(), module.inlined_graph  # the graph held: its nodes die with it
    for kind in _RECURRENT:
        for node in graph.findAllNodes(kind, True):
            inputs = list(node.inputs())
            if len(inputs) != 9 or inputs[8].node().kind() != "prim::Constant":
                return None
            found.add(bool(inputs[8].toIValue()))
    return found.pop() if len(found) == 1 else None


# -- the reference and helpers -------------------------------------------------------------------

def _float64_module(path: Path, names: list[str], tables: dict[str, int], out_names: list[str],
                    example: list[torch.Tensor], bound: Arrays) -> Callable[[Arrays], Arrays] | None:
    """The file loaded again and `.double()`d, or None where that cannot run (a traced module keeps
    the dtypes it was traced with in its constants). The trial run is on a copy of its own, so
    that a module keeping state starts from the saved state, as every artifact does."""
    def reference_of(twin: torch.jit.ScriptModule) -> Callable[[Arrays], Arrays]:
        constants = _arguments(twin, bound, torch.float64)

        def reference64(arrays: Arrays) -> Arrays:
            args = [torch.from_numpy(np.asarray(arrays[n], dtype=np.int64 if n in tables else np.float64))
                    for n in names]
            return {n: r.detach().numpy() for n, r in zip(out_names, _call(twin, names, args, constants))}

        return reference64

    try:
        reference_of(_load(path).double())({n: e.numpy() for n, e in zip(names, example)})
    except Exception:  # noqa: BLE001 - any failure means "cannot run in float64"
        return None
    return reference_of(_load(path).double())


def _load(path: Path) -> torch.jit.ScriptModule:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, ValueError, zip errors...
        raise UserError(f"{path}: not a TorchScript file saved with torch.jit.save ({first_line(err)})") from None
    return module.eval()


def _token_inputs(module: torch.jit.ScriptModule, names: list[str]) -> dict[str, int]:
    """Forward arguments used directly as embedding indices -> that table's number of rows."""
    graph = module.inlined_graph
    found: dict[str, int] = {}
    params = {a.name: v for a, v in zip(module.forward.schema.arguments[1:], list(graph.inputs())[1:])}
    for name in names:
        for use in params[name].uses():
            if use.user.kind() == "aten::embedding" and use.offset == 1:
                weight = _attribute(module, list(use.user.inputs())[0])
                if weight is not None:
                    found[name] = min(found.get(name, weight.shape[0]), int(weight.shape[0]))
    return found


def _attribute(module: torch.nn.Module, value: torch._C.Value) -> torch.Tensor | None:
    """The tensor a chain of prim::GetAttr from `self` names, if it is one."""
    chain, node = [], value.node()
    while node.kind() == "prim::GetAttr":
        chain.append(node.s("name"))
        node = next(node.inputs()).node()
    if node.kind() != "prim::Param":
        return None
    obj: Any = module
    for attr in reversed(chain):
        obj = getattr(obj, attr, None)
    return obj if isinstance(obj, torch.Tensor) else None


def _example(shape: tuple[int, ...], rows: int | None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if rows is not None:
        return torch.randint(0, rows, shape, generator=generator, dtype=torch.int64)
    return torch.randn(shape, generator=generator)


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return [out]
