"""rnnc: compile recurrent networks to TorchScript, ONNX Runtime and TVM, verify them against a
float64 reference, and benchmark them honestly.

The pipeline, one stage per subpackage: spec -> graph (`graphs`) -> lowering (`compiler`) ->
artifact (`targets`) -> verify (`compiler.verify`) -> bench (`bench`) -> report (`reports`).
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(directory, backend: str = "onnxruntime", target: str | None = None):  # noqa: ANN001
    """A runner over one backend of a compiled DIR (see `rnnc.api.load`)."""
    from rnnc.api import load as _load

    return _load(directory, backend, target)


def compile(source, target: str = "cpu", **kwargs):  # noqa: A001, ANN001, ANN003
    """Compile a spec or model file (see `rnnc.api.compile`)."""
    from rnnc.api import compile as _compile

    return _compile(source, target, **kwargs)


def verify(source, target: str | None = None, **kwargs):  # noqa: ANN001, ANN003
    """Verify a compiled DIR or a spec (see `rnnc.api.verify`)."""
    from rnnc.api import verify as _verify

    return _verify(source, target, **kwargs)
