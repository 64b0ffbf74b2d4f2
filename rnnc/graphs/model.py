"""`Model`: what every later stage works from, whatever the user brought (spec, ONNX, TorchScript).

The float32 ONNX graph is the one intermediate form every lowering starts from; the float64
reference is the oracle that `verify` trusts, built from the source (spec and seed, or the user's
file), never from an artifact under test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from rnnc.records.manifest import TensorInfo

if TYPE_CHECKING:
    import onnx

Arrays = dict[str, np.ndarray]


@dataclass
class Model:
    """A model ready to lower. `reference64` maps named inputs to named float64 outputs."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    onnx: onnx.ModelProto | None  # None: a TorchScript model torch.onnx cannot export
    reference64: Callable[[Arrays], Arrays]
    shapes: list[tuple[int, int]]  # the (batch, seq) pairs to build, verify and bench
    source: dict[str, Any]  # how to rebuild the model and its reference (kept in the manifest)
    torch_module: Any = None  # float32 torch.nn.Module when there is an eager one
    spec: Any = None  # the ModelSpec when the model came from a YAML spec
    dtype: str = "float32"
    origin: Path | None = None  # the user's file a model was imported from (None for a spec)
    state: dict[str, str] = field(default_factory=dict)  # state input -> the output that is its next value
    # generative token models: the reference with the given tokens [batch, steps] fed back in place
    # of its own argmax, so that each step is checked on the backend's own history (`verify`)
    teacher64: Callable[[Arrays, np.ndarray], Arrays] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def random_inputs(self, batch: int, seq: int, rng: np.random.Generator) -> Arrays:
        """Fresh inputs: token ids uniform over the vocabulary, integers a model compares with
        constants drawn from those constants and their neighbours, flags either way, features
        standard normal."""
        arrays = {}
        for t in self.inputs:
            shape = t.shape(batch, seq)
            kind = np.dtype(t.dtype).kind
            if kind == "b":
                arrays[t.name] = rng.integers(0, 2, size=shape).astype(bool)
            elif kind in "iu" and t.values:
                arrays[t.name] = np.asarray(rng.choice(np.array(t.values, dtype=t.dtype), size=shape))
            elif kind in "iu":
                arrays[t.name] = rng.integers(t.low or 0, t.high or 2, size=shape, dtype=t.dtype)
            else:
                arrays[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return {k: np.asarray(v) for k, v in arrays.items()}  # rank-0 draws are numpy scalars otherwise
