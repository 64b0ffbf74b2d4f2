"""OpenVINO: the ONNX graph converted to OpenVINO's IR, run by its CPU plugin.

Why the precision is told and then checked: on a CPU with avx512_bf16 or AMX the CPU plugin runs a
float32 model in bf16 by default, silently (errors near 5e-3 where float32 gives 1e-7). So every
compile sets `INFERENCE_PRECISION_HINT` to what the backend's name says (`openvino` f32,
`openvino:bf16` bf16, `openvino:fp16` f16), reads the property back from the compiled model, and
refuses a model compiled at anything else.

Artifacts under DIR/openvino/: `model.xml` + `model.bin` (the IR, float32 weights, batch and
sequence dynamic; every precision's entry lists them and rewrites them identically) and
`PRECISION.json` (the precision, the hint, the plugin config, OpenVINO's version and the CPU).
"""
from __future__ import annotations

import io
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rnnc import host
from rnnc.errors import Unsupported
from rnnc.graphs.model import Model
from rnnc.records.manifest import Manifest
from rnnc.targets.base import Arrays, Call, Runner, manifest_io

ORDER = 3
PRECISIONS = ("fp32", "fp16", "bf16")
IR = ("openvino/model.xml", "openvino/model.bin")
FORMAT = 1
_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # OpenVINO's element type names
_CAPABILITY = {"fp16": "FP16", "bf16": "BF16"}  # what OPTIMIZATION_CAPABILITIES must list


def available(target: str) -> str | None:
    try:
        devices = _core().available_devices
    except ImportError as err:
        return f"openvino is not installed ({err})"
    if target == "cuda":
        return "rnnc's OpenVINO backend is its CPU plugin: it does not run on CUDA"
    if "CPU" not in devices:
        return f"OpenVINO {_version()} has no CPU plugin here (devices: {', '.join(devices) or 'none'})"
    return None


def runnable(target: str) -> str | None:
    return available(target)


def record_path(precision: str) -> str:
    return f"openvino/{precision}.json"


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any], precision: str) -> list[str]:
    """The IR, converted from the model's ONNX graph, and this precision's record."""
    import openvino as ov

    if model.onnx is None:
        raise Unsupported(f"no ONNX graph: {model.extra.get('no_onnx', 'the model has none')}")
    if model.spec is not None and model.dtype != "float32":  # a spec's graph is float32; torch runs its dtype
        raise Unsupported(f"the exported graph is float32; the spec's {model.dtype} runs on torch and torchscript")
    _check_capability(precision)
    try:
        converted = ov.convert_model(io.BytesIO(model.onnx.SerializeToString()))
        _dynamic(converted, model)
    except Exception as err:  # noqa: BLE001 - the converter raises several types; each is OpenVINO's refusal
        raise Unsupported(f"OpenVINO {_version()} cannot convert it: {first_line(err)}") from None
    out = Path(out_dir) / "openvino"
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{os.getpid()}"  # written whole, then renamed: a runner reading the last IR keeps it
    staging.mkdir(exist_ok=True)
    ov.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
    for name in ("model.xml", "model.bin"):
        os.replace(staging / name, out / name)
    staging.rmdir()
    record = {"format": FORMAT, "precision": precision, "inference_precision_hint": _HINT[precision],
              "config": config(precision, None), "openvino_version": _version(), "cpu": host.cpu(),
              "device": _core().get_property("CPU", "FULL_DEVICE_NAME")}
    (Path(out_dir) / record_path(precision)).write_text(json.dumps(record, indent=2) + "\n")
    return [*IR, record_path(precision)]


def load(out_dir: Path, manifest: Manifest, target: str, threads: int | None, precision: str) -> Runner:
    """The IR compiled for the CPU at `precision`; `threads` its pool size (None: OpenVINO's default)."""
    return RequestRunner(Path(out_dir), manifest, precision, threads)


def config(precision: str, threads: int | None) -> dict[str, Any]:
    """The CPU plugin's properties: the precision asked for, one stream, the latency hint, no
    pinning (the plugin would pin threads of a process that runs the other backends too)."""
    found: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINT[precision], "NUM_STREAMS": 1,
                             "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
    if threads is not None:
        found["INFERENCE_NUM_THREADS"] = threads
    return found


class RequestRunner(Runner):
    """One compiled model and one InferRequest, reused: a call binds nothing new unless another
    call was bound since."""

    def __init__(self, out_dir: Path, manifest: Manifest, precision: str, threads: int | None) -> None:
        super().__init__(*manifest_io(manifest))
        _check_capability(precision)
        core = _core()
        try:
            self.compiled = core.compile_model(core.read_model(str(out_dir / IR[0])), "CPU",
                                               config(precision, threads))
        except RuntimeError as err:  # the plugin has no kernel for an op: its decision, named by it
            raise Unsupported(f"OpenVINO {_version()} CPU plugin: {first_line(err)}") from None
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != _HINT[precision]:
            raise Unsupported(f"OpenVINO compiled the model at {got}, not the {_HINT[precision]} asked for")
        self.precision = precision
        self.request = self.compiled.create_infer_request()
        self.ports = [self.compiled.output(name) for name in self.output_names]
        self.dtypes = [np.dtype(t.dtype) for t in manifest.io.outputs]
        self._bound: object = None

    def _prepare(self, arrays: Arrays) -> Call:
        import openvino as ov

        tensors = {name: ov.Tensor(a, shared_memory=True) for name, a in arrays.items()}  # keeps `arrays` alive
        request, ports, dtypes, names = self.request, self.ports, self.dtypes, self.output_names

        def call() -> Arrays:
            if self._bound is not tensors:  # another bind ran since: put this one's inputs back
                for name, tensor in tensors.items():
                    request.set_tensor(name, tensor)
                self._bound = tensors
            results = request.infer(share_outputs=True)  # views of OpenVINO's buffers: copied once, here
            return {name: np.array(results[port], dtype=dtype) for name, port, dtype in zip(names, ports, dtypes)}

        return call


def _check_capability(precision: str) -> None:
    needed = _CAPABILITY.get(precision)
    if needed is None:
        return
    capabilities = list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if needed not in capabilities:
        raise Unsupported(f"this CPU has no {needed} in OpenVINO's OPTIMIZATION_CAPABILITIES "
                          f"({', '.join(capabilities)}): {precision} would run as f32")


def _dynamic(converted: Any, model: Model) -> None:
    """Batch and sequence axes dynamic in the IR, whatever the ONNX graph fixed them to."""
    import openvino as ov

    wanted = {}
    for info in model.inputs:
        shape = converted.input(info.name).get_partial_shape()
        dims = [ov.Dimension() if isinstance(d, str) else ov.Dimension(d) for d in info.dims]
        if shape.rank.is_dynamic or len(shape) != len(dims) or any(
                isinstance(d, str) and shape[i].is_static for i, d in enumerate(info.dims)):
            wanted[info.name] = ov.PartialShape(dims)
    if wanted:
        converted.reshape(wanted)


def first_line(err: BaseException) -> str:
    """OpenVINO's reason, without the C++ check's file and line or the frontend's preamble."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    skip = ("Check '", "FrontEnd API failed", "Exception from src", "Model wasn't fully converted", "[ERROR]",
            "Traceback", "Failed operations detailed log", "Summary:")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    return (useful or lines or [type(err).__name__])[0].lstrip("- ")


@cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def _version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]
