"""PyTorch eager: the reference implementation, run from the module the spec describes."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnc.errors import Unsupported
from rnnc.graphs.model import Model
from rnnc.graphs.spec import parse_spec
from rnnc.graphs.torch_model import TORCH_DTYPES, build_torch_model
from rnnc.records.manifest import Manifest
from rnnc.targets.base import Arrays, Call, Runner, manifest_io

ORDER = 0
PRECISIONS = ("fp32",)
ARTIFACT = "torch_state.pt"


def available(target: str) -> str | None:
    if target == "cuda" and not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def runnable(target: str) -> str | None:
    return available(target)


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any], precision: str) -> list[str]:
    if model.torch_module is None:
        raise Unsupported("no eager PyTorch module: the model came as a file, not as a spec")
    buffer = io.BytesIO()  # written by Python, whose full disk is an OSError, not torch's zip writer's abort
    torch.save(model.torch_module.state_dict(), buffer)
    (out_dir / ARTIFACT).write_bytes(buffer.getvalue())
    return [ARTIFACT]


def load(out_dir: Path, manifest: Manifest, target: str, threads: int | None, precision: str) -> Runner:
    source = manifest.source
    if source.get("kind") != "spec":
        raise Unsupported("no eager PyTorch module: the model came as a file, not as a spec")
    spec = parse_spec(source["spec"], "manifest spec")
    module = build_torch_model(spec).to(TORCH_DTYPES[spec.dtype])
    module.load_state_dict(torch.load(out_dir / ARTIFACT, map_location="cpu", weights_only=True))
    return ModuleRunner(module, manifest, target, threads)


class ModuleRunner(Runner):
    """Runs any torch.nn.Module (eager or scripted) with one tensor input per model input.

    `threads` sets torch's intra-op pool, which is process-wide: the last runner loaded decides it.
    """

    def __init__(self, module: Any, manifest: Manifest, target: str, threads: int | None) -> None:
        super().__init__(*manifest_io(manifest))
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if target == "cuda" else "cpu")
        self.module = module.to(self.device).eval()
        self.float_dtype = getattr(torch, manifest.dtype)

    def _prepare(self, arrays: Arrays) -> Call:
        tensors = [torch.from_numpy(arrays[n]).to(self.device) for n in self.input_names]
        tensors = [t.to(self.float_dtype) if t.is_floating_point() else t for t in tensors]
        cuda = self.device.type == "cuda"

        def call() -> Arrays:
            with torch.inference_mode():
                outs = _flatten(self.module(*tensors))
                host = [(o.float() if o.is_floating_point() else o).detach().cpu().numpy() for o in outs]
            if cuda:
                torch.cuda.synchronize()
            return {n: np.asarray(o) for n, o in zip(self.output_names, host)}

        return call


def _flatten(out: Any) -> list[torch.Tensor]:
    """A module's outputs in order, nested tuples such as (y, (h, c)) flattened as ONNX numbers them."""
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    return [out]
