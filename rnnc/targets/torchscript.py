"""TorchScript: `model.ts`, scripted from the reference module, or the user's own file (with the
`--bind` arguments fixed inside a scripted wrapper, so that model.ts takes the free inputs only)."""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import torch

from rnnc.errors import Unsupported
from rnnc.graphs.from_torchscript import bound_script, recorded_bind
from rnnc.graphs.model import Model
from rnnc.records.manifest import Manifest
from rnnc.targets import torch as eager
from rnnc.targets.base import Runner

ORDER = 1
PRECISIONS = ("fp32",)
ARTIFACT = "model.ts"


def available(target: str) -> str | None:
    return eager.available(target)


def runnable(target: str) -> str | None:
    return eager.runnable(target)


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any], precision: str) -> list[str]:
    if model.source.get("kind") == "torchscript" and model.origin is not None:
        if bind := recorded_bind(model.source):  # the constants inside: model.ts takes the free inputs only
            _save(bound_script(model.origin, bind), out_dir / ARTIFACT)
        elif model.origin.resolve() != (out_dir / ARTIFACT).resolve():
            shutil.copyfile(model.origin, out_dir / ARTIFACT)
    elif model.torch_module is not None:
        _save(torch.jit.script(model.torch_module), out_dir / ARTIFACT)
    else:
        raise Unsupported("no PyTorch module to script: the model came as ONNX")
    return [ARTIFACT]


def _save(module: torch.jit.ScriptModule, path: Path) -> None:
    """Through memory: torch's zip writer aborts the process on a full disk; Python's write raises."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    path.write_bytes(buffer.getvalue())


def load(out_dir: Path, manifest: Manifest, target: str, threads: int | None, precision: str) -> Runner:
    module = torch.jit.load(str(out_dir / ARTIFACT), map_location="cuda" if target == "cuda" else "cpu")
    return eager.ModuleRunner(module, manifest, target, threads)
