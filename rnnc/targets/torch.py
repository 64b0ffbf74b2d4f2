"""PyTorch eager: the reference implementation, run from the module the spec describes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rnnc.graphs.model import Model
from rnnc.targets.base import Arrays, Runner, Unsupported

ARTIFACT = "torch_state.pt"


def available(target: str) -> str | None:
    if target == "cuda" and not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any]) -> list[str]:
    if model.torch_module is None:
        raise Unsupported("no eager PyTorch module: the model came as a file, not as a spec")
    torch.save(model.torch_module.state_dict(), out_dir / ARTIFACT)
    return [ARTIFACT]


def load(out_dir: Path, manifest: dict[str, Any], target: str) -> Runner:
    from rnnc.graphs.spec import parse_spec
    from rnnc.graphs.torch_model import TORCH_DTYPES, build_torch_model

    source = manifest["source"]
    if source.get("kind") != "spec":
        raise Unsupported("no eager PyTorch module: the model came as a file, not as a spec")
    spec = parse_spec(source["spec"], "manifest spec")
    module = build_torch_model(spec).to(TORCH_DTYPES[spec.dtype])
    module.load_state_dict(torch.load(out_dir / ARTIFACT, map_location="cpu", weights_only=True))
    return ModuleRunner(module, manifest, target)


class ModuleRunner(Runner):
    """Runs any torch.nn.Module (eager or scripted) with one tensor input per model input."""

    def __init__(self, module: Any, manifest: dict[str, Any], target: str) -> None:
        io = manifest["io"]
        super().__init__([t["name"] for t in io["inputs"]], [t["name"] for t in io["outputs"]],
                         [t["dtype"] for t in io["inputs"]])
        self.device = torch.device("cuda" if target == "cuda" else "cpu")
        self.module = module.to(self.device).eval()
        self.float_dtype = getattr(torch, manifest.get("dtype", "float32"))

    def _tensors(self, arrays: Arrays) -> list[torch.Tensor]:
        tensors = [torch.from_numpy(arrays[n]).to(self.device) for n in self.input_names]
        return [t.to(self.float_dtype) if t.is_floating_point() else t for t in tensors]

    def _forward(self, tensors: list[torch.Tensor]) -> Any:
        with torch.inference_mode():
            out = self.module(*tensors)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def _run(self, arrays: Arrays) -> Arrays:
        outs = _flatten(self._forward(self._tensors(arrays)))
        return {n: np.asarray(o.detach().float().cpu().numpy()) for n, o in zip(self.output_names, outs)}

    def bind(self, **arrays: np.ndarray) -> Callable[[], object]:
        tensors = self._tensors(self.check_inputs(arrays))
        return lambda: self._forward(tensors)


def _flatten(out: Any) -> list[torch.Tensor]:
    """A module's outputs in order, nested tuples such as (y, (h, c)) flattened as ONNX numbers them."""
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    return [out]
