"""rnnc: compile recurrent networks to TorchScript, ONNX Runtime and TVM, verify them against a
float64 reference, and benchmark them honestly.

The pipeline, one stage per subpackage or module, each importing only the ones before it:
leaves (`errors`, `records`, `stats`, `host`, `progress`) -> spec and graph (`graphs`) ->
lowering (`compiler`) -> artifacts (`targets`) -> `verify` -> `pipeline` (compile, open a DIR) ->
`bench` -> `history` (runs in a database) -> `reports` -> `api` (and this facade) -> `cli`.
`tests/test_layering.py` holds the code to that order.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(directory: Any, backend: str = "onnxruntime", target: str | None = None, **kwargs: Any) -> Any:
    """A runner over one backend of a compiled DIR (see `rnnc.api.load`)."""
    from rnnc import api

    return api.load(directory, backend, target, **kwargs)


def compile(source: Any, target: str = "cpu", **kwargs: Any) -> Any:  # noqa: A001
    """Compile a spec or model file (see `rnnc.api.compile`)."""
    from rnnc import api

    return api.compile(source, target, **kwargs)


def verify(source: Any, target: str | None = None, **kwargs: Any) -> Any:
    """Verify a compiled DIR or a spec (see `rnnc.api.verify`)."""
    from rnnc import api

    return api.verify(source, target, **kwargs)
