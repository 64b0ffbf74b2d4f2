"""TorchScript: `model.ts`, scripted from the reference module (or the user's own file)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from rnnc.graphs.model import Model
from rnnc.targets.base import Runner, Unsupported
from rnnc.targets.torch import ModuleRunner
from rnnc.targets.torch import available as _torch_available

ARTIFACT = "model.ts"


def available(target: str) -> str | None:
    return _torch_available(target)


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any]) -> list[str]:
    if model.source.get("kind") == "torchscript":
        shutil.copyfile(out_dir / model.source["file"], out_dir / ARTIFACT)
    elif model.torch_module is not None:
        torch.jit.save(torch.jit.script(model.torch_module), str(out_dir / ARTIFACT))
    else:
        raise Unsupported("no PyTorch module to script: the model came as ONNX")
    return [ARTIFACT]


def load(out_dir: Path, manifest: dict[str, Any], target: str) -> Runner:
    module = torch.jit.load(str(out_dir / ARTIFACT), map_location="cuda" if target == "cuda" else "cpu")
    return ModuleRunner(module, manifest, target)
