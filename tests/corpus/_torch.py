"""Seeded weights, the torch.onnx call every torch-built case shares, and the torch reference."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.corpus.case import Reference

OPSET = 17


def seeded(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter from `seed`, in eval mode, on a scale that keeps the gates unsaturated.

    Weights are U(-a, a) with a = sqrt(3 / fan_in), variance 1/fan_in (LeCun's uniform): each layer
    keeps its input's scale, so gate pre-activations stay near unit size, neither saturated nor so
    small that every output is the same (torch's default bound, 1/sqrt(fan_in), shrinks the signal
    threefold in variance per layer and leaves a CTC head near uniform). Biases U(-0.1, 0.1).
    BatchNorm gets running statistics and an affine map away from the identity, so that a converter
    which drops or misreads them fails the comparison.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, bound: float) -> torch.Tensor:
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                fan_in = math.prod(param.shape[1:])
                param.copy_(uniform(param.shape, math.sqrt(3 / fan_in)))
            else:
                param.copy_(uniform(param.shape, 0.1))
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.running_mean.copy_(uniform(sub.running_mean.shape, 0.2))
                sub.running_var.copy_(1 + uniform(sub.running_var.shape, 0.5))
                sub.weight.add_(1.0)  # gamma near 1, not near 0
    return module.eval()


def export(module: nn.Module, args: Sequence[torch.Tensor], path: Path, input_names: list[str],
           output_names: list[str], dynamic_axes: Mapping[str, Mapping[int, str]],
           keep_batchnorm: bool = False) -> Path:
    """torch.onnx's TorchScript exporter (dynamo=False), opset 17.

    keep_batchnorm: in its default EVAL mode the exporter folds a BatchNorm that follows a Conv into
    the Conv's weights; PRESERVE (the module being in eval mode already) skips that peephole, so the
    file keeps its BatchNormalization nodes (inference form, running statistics) for an importer to
    convert. Its warning about constant folding in training mode does not apply to an eval module.
    """
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation, LSTM batch-size advice
        torch.onnx.export(module, tuple(args), str(path), opset_version=OPSET, dynamo=False,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, training=mode)
    return path


def script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in 2.13, still what exports If/Loop
        return torch.jit.script(module)


def reference(module: nn.Module | torch.jit.ScriptModule, input_names: list[str],
              output_names: list[str]) -> Reference:
    """The module as a function of named numpy arrays, in the module's own dtype."""

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.asarray(inputs[n])) for n in input_names))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: t.numpy() for n, t in zip(output_names, out, strict=True)}

    return run
