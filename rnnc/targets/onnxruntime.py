"""ONNX Runtime: an InferenceSession over `model.onnx`, CPU or CUDA execution provider.

`onnxruntime:int8` is what an ORT user does for speed: `quantize_dynamic` (int8 weights, activations
quantized per call), which turns each LSTM into com.microsoft's DynamicQuantizeLSTM and each MatMul
into MatMulInteger, written to `model-int8.onnx`. ORT has no int8 GRU or RNN: a graph whose
recurrent nodes would stay float32 is refused with that reason rather than run as "int8" while
its recurrence is float32.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rnnc.errors import Unsupported
from rnnc.graphs.model import Model
from rnnc.graphs.onnx_export import save_onnx
from rnnc.records.manifest import Manifest
from rnnc.targets.base import Arrays, Call, Runner, manifest_io

ORDER = 2
PRECISIONS = ("fp32", "int8")
ARTIFACT = "model.onnx"
ARTIFACTS = {"fp32": ARTIFACT, "int8": "model-int8.onnx"}
_RECURRENT = ("LSTM", "GRU", "RNN")
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available(target: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as err:
        return f"onnxruntime is not installed ({err})"
    if _PROVIDER[target] not in ort.get_available_providers():
        return f"{_PROVIDER[target]} is not in this onnxruntime build (it has {', '.join(ort.get_available_providers())})"
    return None


def runnable(target: str) -> str | None:
    return available(target)


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any], precision: str) -> list[str]:
    """ORT runs the graph as the model holds it: model.onnx, written here (the same file the
    compile exports for every user)."""
    if model.onnx is None:
        raise Unsupported(f"no ONNX graph: {model.extra.get('no_onnx', 'the model has none')}")
    if model.spec is not None and model.dtype != "float32":  # a spec's graph is float32; torch runs its dtype
        raise Unsupported(f"the exported graph is float32; the spec's {model.dtype} runs on torch and torchscript")
    if precision == "int8":
        return [_quantize(model.onnx, out_dir)]
    save_onnx(model.onnx, out_dir / ARTIFACT)
    return [ARTIFACT]


def _quantize(proto: Any, out_dir: Path) -> str:
    """model-int8.onnx: ORT's dynamic quantization of the graph (int8 weights, QInt8)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    left = [n.op_type for n in _nodes(proto.graph) if n.op_type in ("GRU", "RNN")]
    if left:
        raise Unsupported(f"ONNX Runtime has no int8 {'/'.join(sorted(set(left)))} kernel (quantize_dynamic "
                          "quantizes LSTM only): its recurrence would stay float32")
    with tempfile.TemporaryDirectory(prefix="rnnc-ort-int8-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model-int8.onnx"
        save_onnx(proto, source)
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(max(level, logging.ERROR))  # it logs advice to pre-process at WARNING on the root logger
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        quantized = onnx.load(str(target))
    still = [n.op_type for n in _nodes(quantized.graph) if n.op_type in _RECURRENT and n.domain in ("", "ai.onnx")]
    if still:  # e.g. an LSTM inside a Loop body: quantize_dynamic leaves subgraphs as they are
        raise Unsupported(f"quantize_dynamic left {len(still)} {'/'.join(sorted(set(still)))} node(s) float32 "
                          "(inside a Loop, If or Scan body)")
    if not any(n.domain == "com.microsoft" or n.op_type in ("MatMulInteger", "ConvInteger")
               for n in _nodes(quantized.graph)):
        raise Unsupported("quantize_dynamic found nothing to quantize in the graph")
    save_onnx(quantized, out_dir / ARTIFACTS["int8"])
    return ARTIFACTS["int8"]


def _nodes(graph: Any) -> list[Any]:
    """Every node of a graph and of its subgraphs (Loop, If, Scan bodies)."""
    import onnx

    found = []
    for node in graph.node:
        found.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found += _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    found += _nodes(g)
    return found


def load(out_dir: Path, manifest: Manifest, target: str, threads: int | None, precision: str) -> Runner:
    """A session over model.onnx (model-int8.onnx at int8); `threads` sets its intra-op pool (None:
    ORT's default)."""
    return SessionRunner(out_dir / ARTIFACTS[precision], manifest, target, threads)


class SessionRunner(Runner):
    def __init__(self, path: Path, manifest: Manifest, target: str, threads: int | None) -> None:
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

        super().__init__(*manifest_io(manifest))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # ORT 1.32's NCHWc rewrite crashes the process on float16 recurrent outputs feeding a MatMul
        # (Squeeze -> Transpose -> MatMul after a GRU, as torch exports nn.GRU + nn.Linear)
        disabled = ["NchwcTransformer"] if manifest.dtype == "float16" else None
        try:
            self.session = ort.InferenceSession(str(path), options, providers=[_PROVIDER[target]],
                                                disabled_optimizers=disabled)
        except OrtNotImplemented as err:  # ORT has no kernel for an op: its decision, named by ORT
            raise Unsupported(f"ONNX Runtime {ort.__version__}: {_first_line(err)}") from None

    def _prepare(self, arrays: Arrays) -> Call:
        names, run = self.output_names, self.session.run
        return lambda: dict(zip(names, run(names, arrays)))


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text.split("NOT_IMPLEMENTED : ", 1)[-1]  # ORT prefixes "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : "
