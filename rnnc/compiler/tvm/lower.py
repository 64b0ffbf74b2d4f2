"""ONNX graph -> one Relax IRModule: TVM's own ONNX frontend, with our TIR kernels for the recurrent
nodes, the dense chains, the convolutions, and Loop / Scan.

Three steps: `sequences` turns the Python lists a scripted loop appends to (SequenceInsert in a
Loop body) into Loop scan outputs; `absorb` rewrites the graph so that one node stands for each
kernel of ours (the layout shuffles around a recurrent node, MatMul + Add + activation chains,
Conv with its inference BatchNorm and activation); then `frontend.Importer` (upstream's importer
plus our converters) builds the module. An operator or attribute nothing takes raises
`Unsupported` naming it, so nothing is silently ignored.

The target kind picks the layer kernels, `kernels` (llvm) or `cuda`; the dense and conv kernels
are the CPU's (on CUDA, MatMul and Conv go through upstream and TVM's default GPU schedules).

Recurrent attributes taken: direction (forward, reverse, bidirectional), layout 0/1, hidden_size,
activations Sigmoid/Tanh/Relu (the same for both directions), clip, initial_h, initial_c, LSTM
peepholes P, GRU linear_before_reset 0 and 1, sequence_lens (CPU). Refused with the reason:
input_forget=1, activation_alpha/beta (activations with parameters), W/R/B/P computed at run time,
non-float32 weights, sequence_lens on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from rnnc.compiler.tvm.absorb import absorb
from rnnc.compiler.tvm.sequences import sequences_to_scan_outputs
from rnnc.compiler.tvm.spec import Tuning
from rnnc.errors import Unsupported

__all__ = ["Lowered", "Tuning", "lower"]

_DTYPES = {v: onnx.helper.tensor_dtype_to_np_dtype(v).name for v in
           (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64,
            onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
            onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL)}


@dataclass
class Lowered:
    """The module to build, and what the build records about it."""

    module: Any  # tvm.IRModule
    inputs: list[dict[str, Any]]
    outputs: list[str]
    layers: list[dict[str, Any]] = field(default_factory=list)


def lower(proto: onnx.ModelProto, target_kind: str = "llvm", tuning: Tuning | None = None,
          fusions: tuple[str, ...] = ("dense", "layouts", "conv"), precision: str = "fp32",
          vnni: bool = False) -> Lowered:
    """The Relax module of an ONNX model, whose `main` takes the graph inputs in order; `target_kind`
    is "llvm" or "cuda"; `fusions` the rewrites of `absorb` to apply (dense and conv on llvm only);
    `precision` how the recurrent layers' W and R are stored ("fp32", "bf16", "int8": `quant`, CPU
    only), `vnni` whether int8 products may use AVX512-VNNI (the target's LLVM features have it)."""
    from rnnc.compiler.tvm.frontend import KERNELS, Importer

    if target_kind not in KERNELS:
        raise ValueError(f"target kind {target_kind!r}: expected one of {', '.join(KERNELS)}")
    graph = absorb(sequences_to_scan_outputs(proto), dense="dense" in fusions and target_kind == "llvm",
                   layouts="layouts" in fusions, conv="conv" in fusions and target_kind == "llvm")
    if precision != "fp32" and target_kind != "llvm":
        raise Unsupported(f"{precision} recurrent kernels are CPU only (target kind {target_kind})")
    importer = Importer(target_kind, tuning or Tuning(), precision, vnni)
    module = importer.import_model(graph)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [{"name": v.name, "dtype": _DTYPES.get(v.type.tensor_type.elem_type, "float32")}
              for v in proto.graph.input if v.name not in initializers]
    return Lowered(module, inputs, [o.name for o in proto.graph.output], importer.layers)
