"""ONNX Runtime: an InferenceSession over `model.onnx`, CPU or CUDA execution provider."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from rnnc.graphs.model import Model
from rnnc.targets.base import Arrays, Runner, Unsupported

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


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any]) -> list[str]:
    """model.onnx is written by the compiler for every backend; ORT needs nothing more."""
    if model.dtype != "float32":
        raise Unsupported(f"ONNX Runtime's LSTM, GRU and RNN kernels take float32 only, not {model.dtype}")
    if not (out_dir / ARTIFACT).is_file():
        raise FileNotFoundError(out_dir / ARTIFACT)
    return [ARTIFACT]


def load(out_dir: Path, manifest: dict[str, Any], target: str, threads: int | None = None) -> Runner:
    """A session over model.onnx; `threads` sets its intra-op pool (None: ORT's default)."""
    return SessionRunner(out_dir / ARTIFACT, target, threads)


class SessionRunner(Runner):
    def __init__(self, path: Path, target: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=[_PROVIDER[target]])
        inputs = self.session.get_inputs()
        dtypes = [_NUMPY.get(i.type, "float32") for i in inputs]
        super().__init__([i.name for i in inputs], [o.name for o in self.session.get_outputs()], dtypes)

    def _run(self, arrays: Arrays) -> Arrays:
        return dict(zip(self.output_names, self.session.run(self.output_names, arrays)))

    def bind(self, **arrays: np.ndarray) -> Callable[[], object]:
        checked = self.check_inputs(arrays)
        return lambda: self.session.run(self.output_names, checked)


_NUMPY = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
          "tensor(int32)": "int32", "tensor(float16)": "float16", "tensor(bool)": "bool"}
