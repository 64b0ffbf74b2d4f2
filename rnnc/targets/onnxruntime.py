"""ONNX Runtime: an InferenceSession over `model.onnx`, CPU or CUDA execution provider."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnc.errors import Unsupported
from rnnc.graphs.model import Model
from rnnc.graphs.onnx_export import save_onnx
from rnnc.records.manifest import Manifest
from rnnc.targets.base import Arrays, Call, Runner, manifest_io

ORDER = 2
PRECISIONS = ("fp32",)
ARTIFACT = "model.onnx"
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
    save_onnx(model.onnx, out_dir / ARTIFACT)
    return [ARTIFACT]


def load(out_dir: Path, manifest: Manifest, target: str, threads: int | None, precision: str) -> Runner:
    """A session over model.onnx; `threads` sets its intra-op pool (None: ORT's default)."""
    return SessionRunner(out_dir / ARTIFACT, manifest, target, threads)


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
