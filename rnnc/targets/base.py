"""The contract every backend module in `rnnc/targets/` fills in, and the runner they return.

A backend is one module named after it. It declares, at module level and nothing else:

    ORDER: int                                    # where it stands in tables (the reference first)
    PRECISIONS: tuple[str, ...]                   # what `NAME:PRECISION` it builds; the first is NAME's
    available(target: str) -> str | None          # None when it can build here, else why not
    runnable(target: str) -> str | None           # None when what it builds can also run here
    build(model, out_dir, target, options, precision) -> list[str]   # writes its own artifacts, relative paths
    load(out_dir, manifest, target, threads, precision) -> Runner    # threads: its pool size (None: its default)

`precision` is one of PRECISIONS: "fp32" (the model as given), "bf16" or "int8" (weights, and for
some backends arithmetic, at that precision; verified against float64 at that precision's
tolerance, `verify.tolerance`). Artifacts of different precisions have different paths.

`build` reads nothing that another step left in DIR: it writes every file it lists. It raises
`Unsupported` for a model it cannot take (the backend is then `skipped` with the reason); any
other exception marks it `failed`. A backend that builds but cannot run here (TVM for CUDA on a
machine without a GPU) answers `runnable` with the reason, and is recorded "built but not verified".
`tests/targets/test_contract.py` checks every module against this list.

A runner's one primitive is `bind(**arrays)`: the inputs are checked (`graphs.inputs`), converted
and made resident where the backend runs them; the returned call runs the model and returns every
output on the host as numpy. `runner(**arrays)` is `runner.bind(**arrays)()`, so what `verify`
and `bench --check` check is exactly what the bench times.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from rnnc.graphs.inputs import check_inputs
from rnnc.records.manifest import Manifest, TensorInfo

Arrays = dict[str, np.ndarray]
Call = Callable[[], Arrays]
TARGETS = ("cpu", "cuda")
CONTRACT = ("ORDER", "PRECISIONS", "available", "runnable", "build", "load")
DEFAULT_PRECISION = "fp32"


class Runner:
    """Named arrays in, named arrays out. A backend implements `_prepare`: checked host arrays
    in, a call that runs the model and returns numpy outputs by name."""

    def __init__(self, inputs: Sequence[TensorInfo], output_names: Sequence[str]) -> None:
        self.inputs = tuple(inputs)
        self.input_names = [t.name for t in self.inputs]
        self.output_names = list(output_names)

    def __call__(self, **arrays: Any) -> Arrays:
        return self.bind(**arrays)()

    def bind(self, **arrays: Any) -> Call:
        """The model's call on these inputs, checked and resident: time it, call it again."""
        return self._prepare(check_inputs(self.inputs, arrays))

    def _prepare(self, arrays: Arrays) -> Call:
        raise NotImplementedError


def manifest_io(manifest: Manifest) -> tuple[tuple[TensorInfo, ...], list[str]]:
    """The model's inputs and output names, as every runner takes them."""
    return manifest.io.inputs, [t.name for t in manifest.io.outputs]
