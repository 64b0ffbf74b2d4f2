"""A `Model` from a saved TorchScript module (nn.RNN / LSTM / GRU, Embedding, Linear, activations).

TorchScript keeps no input shapes, so every input of `forward` is named in `--shapes`. Which
inputs are token ids: an argument that `forward` passes, as it is, as the indices of an embedding
(`nn.Embedding`, `F.embedding`) is int64 with ids below that table's row count; every other
argument is float32. The reference is the same file loaded again and converted with `.double()`
(a traced module, whose constants keep the dtype it was traced with, cannot run so: its reference
is then the exported graph in float64, evaluated as for an ONNX file);
the ONNX graph every other backend starts from comes from torch.onnx's TorchScript exporter
(`dynamo=False`, which keeps ONNX's own LSTM / GRU / RNN nodes), with every input axis exported
symbolic so that `from_onnx` finds the batch and sequence axes on the recurrent node's X and
fixes the others to the sizes given.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from rnnc.errors import UserError
from rnnc.graphs.from_onnx import (check_proto, imported_model, first_line,
                                   model_name, normal_shapes)
from rnnc.graphs import reference
from rnnc.graphs.model import Arrays, Model

SOURCE_FILE = "source.ts"
OPSET = 17


def model_from_torchscript(path: str | Path, shapes: dict[str, Any] | None = None) -> Model:
    """Load the ScriptModule at `path`; `shapes` gives every forward argument's shape by name."""
    path = Path(path)
    module = _load(path)
    arguments = module.forward.schema.arguments[1:]
    names = [a.name for a in arguments if not a.has_default_value()]  # the others keep their defaults
    shapes = normal_shapes(shapes)
    problems = [f"--shapes: {n!r} is not an argument of forward({', '.join(names)})" for n in shapes if n not in names]
    problems += [f"input {n!r} has no shape in TorchScript; give --shapes {n}:1x16{'x8' if i else ''}"
                 for i, n in enumerate(names) if n not in shapes]
    problems += [f"{path}: forward argument {a.name!r} defaults to None, which torch.onnx cannot export from "
                 "TorchScript; script a wrapper whose forward takes tensors only"
                 for a in arguments if a.has_default_value() and a.default_value is None]
    if problems:
        raise UserError(*problems)
    tables = _token_inputs(module, names)
    example = [_example(shapes[n], tables.get(n)) for n in names]
    try:
        with torch.inference_mode():
            outputs = _flatten(module(*example))
    except RuntimeError as err:
        raise UserError(f"{path}: forward fails on inputs of the --shapes given ({first_line(err)})") from None
    if not outputs or not all(isinstance(o, torch.Tensor) for o in outputs):
        raise UserError(f"{path}: forward must return a tensor or (nested) tuples of tensors")
    out_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    defaults = {a.name: a.default_value for a in arguments if a.has_default_value()}
    proto = check_proto(_export(path, module, example, names, defaults, out_names), f"{path} (as ONNX)")

    reference64 = _float64_module(path, names, tables, out_names, example)
    how = "the module in float64"
    if reference64 is None:  # e.g. traced: nn.LSTM's zero state is a float32 constant in the trace
        reference64 = reference.float64_reference(proto)
        how = "the exported graph in float64 (the module cannot run in float64)"
    name = model_name(path, "torchscript-model")
    source = {"kind": "torchscript", "file": SOURCE_FILE, "name": name,
              "shapes": {k: list(v) for k, v in shapes.items()}}
    model = imported_model(proto, shapes, name, source, reference64)
    model.extra["reference"] = how
    model.origin = path
    return model


def _float64_module(path: Path, names: list[str], tables: dict[str, int], out_names: list[str],
                    example: list[torch.Tensor]) -> Callable[[Arrays], Arrays] | None:
    """The file loaded again and `.double()`d, or None where that cannot run (a traced module keeps
    the dtypes it was traced with in its constants)."""
    twin = _load(path).double()

    def reference64(arrays: Arrays) -> Arrays:
        args = [torch.from_numpy(np.asarray(arrays[n], dtype=np.int64 if n in tables else np.float64))
                for n in names]
        with torch.inference_mode():
            result = _flatten(twin(*args))
        return {n: r.detach().numpy() for n, r in zip(out_names, result)}

    try:
        reference64({n: e.numpy() for n, e in zip(names, example)})
    except RuntimeError:
        return None
    return reference64


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
    for name, value in zip(names, list(graph.inputs())[1:]):
        for use in value.uses():
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


def _export(path: Path, module: torch.jit.ScriptModule, example: list[torch.Tensor], names: list[str],
            defaults: dict[str, Any], out_names: list[str]) -> onnx.ModelProto:
    """torch.onnx's TorchScript exporter, every input axis symbolic. Arguments with a default are
    passed it; the exporter makes them graph inputs, which become constants holding the default."""
    axes = {n: {k: f"{n}_{k}" for k in range(t.dim())} for n, t in zip(names, example)}  # all symbolic
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example) + tuple(defaults.values()), buffer, dynamo=False,
                              input_names=names + list(defaults), output_names=out_names, dynamic_axes=axes,
                              opset_version=OPSET)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; all mean "cannot export"
        raise UserError(f"{path}: torch.onnx cannot export this module to ONNX "
                        f"({type(err).__name__}: {first_line(err)})") from None
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
