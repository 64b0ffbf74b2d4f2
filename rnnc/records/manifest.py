"""DIR/manifest.json (SPEC section 3) as frozen records, and the one place that reads and writes it.

A `Manifest` is built once per compile and changed only by copying (`with_backend`), so the
pipeline, `verify` and the bench all see the same validated shape. Format history:
- 1: the first landing;
- 2: each backend records the `precision` it ran (`fp32` unless the spec's dtype says otherwise),
  the key that per-precision backends (`tvm:int8`, `openvino:bf16`) build on;
- 3: `files`, the SHA-256 and size of every file compile wrote, checked before anything in DIR is
  loaded (`records.digests`); a DIR of an older format has none (`files` is null) and is loaded
  as it is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from rnnc.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 3
PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
Status = Literal["ok", "failed", "skipped"]
Dim = Union[int, str]  # a fixed size, or a symbolic axis such as "batch" or "seq"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TensorInfo:
    """A named model input or output. `high` bounds integer inputs (token ids are < high);
    `values` are the ones an integer input is drawn from (those a model compares it with); `low`,
    where set, is the least id (default 0)."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    dims: tuple[Dim, ...]
    high: Optional[int] = None
    values: Optional[tuple[int, ...]] = None
    low: Optional[int] = None  # with `high`: ids in [low, high) (ONNX Gather counts negatives from the end)

    def shape(self, batch: int, seq: int) -> tuple[int, ...]:
        """Concrete shape for a batch size and sequence length (symbolic axes by name)."""
        sizes = {"batch": batch, "seq": seq}
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)



class IO(_Record):
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


class Errors(_Record):
    """The worst errors of one backend's outputs against the float64 reference (`verify.compare`)."""

    max_abs_err: float
    rel_err: float
    problems: tuple[str, ...] = ()


class ShapeErrors(_Record):
    """Errors at one (batch, seq); None where the backend raised instead of answering."""

    batch: int
    seq: int
    max_abs_err: Optional[float]
    rel_err: Optional[float]
    problems: tuple[str, ...] = ()
    ties: int = 0
    tokens: int = 0


class Verification(_Record):
    """A backend against the float64 reference over every shape verified (worst over them)."""

    max_abs_err: Optional[float]
    rel_err: Optional[float]
    passed: bool
    tolerance: float
    inputs_seed: Optional[int] = None
    shapes: tuple[tuple[int, int], ...] = ()
    per_shape: tuple[ShapeErrors, ...] = ()
    problems: tuple[str, ...] = ()
    chain: Optional[int] = None  # calls chained with the state carried (`verify --chain N`), worst over them
    ties: int = 0  # generated tokens that differ from the reference's argmax by a tie within rounding
    tokens: int = 0  # generated tokens checked


class BackendRecord(_Record):
    status: Status
    reason: Optional[str] = None
    artifacts: tuple[str, ...] = ()
    shapes: tuple[tuple[int, int], ...] = ()
    verification: Optional[Verification] = None
    precision: str = "fp32"
    build_time_s: Optional[float] = None
    artifact_bytes: Optional[int] = None
    traceback: Optional[str] = None

    def but(self, **changes: Any) -> BackendRecord:
        """A validated copy with some fields changed."""
        return BackendRecord.model_validate({**self.model_dump(), **changes})


class FileDigest(_Record):
    """One file of DIR as compile wrote it."""

    sha256: str
    bytes: int


class Manifest(_Record):
    format: Literal[3] = FORMAT
    name: str
    spec: Optional[dict[str, Any]]
    source: dict[str, Any]
    target: Literal["cpu", "cuda"]
    host: dict[str, Any]
    versions: dict[str, str]
    io: IO
    shapes: tuple[tuple[int, int], ...]
    dtype: str
    state: dict[str, str] = {}  # state input -> the output that is its next value (SPEC section 2)
    backends: dict[str, BackendRecord] = {}
    files: Optional[dict[str, FileDigest]] = None  # path relative to DIR -> digest; None before format 3

    @property
    def precision(self) -> str:
        return PRECISIONS.get(self.dtype, "fp32")

    def with_backend(self, name: str, record: BackendRecord) -> Manifest:
        """A copy with backend `name` recorded (added at the end, or replaced where it stands)."""
        return self.model_copy(update={"backends": {**self.backends, name: record}})

    def with_backends(self, backends: dict[str, BackendRecord]) -> Manifest:
        return self.model_copy(update={"backends": dict(backends)})

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    precision = PRECISIONS.get(data.get("dtype", "float32"), "fp32")
    backends = {name: {**b, "precision": precision} for name, b in (data.get("backends") or {}).items()}
    return {**data, "format": 2, "backends": backends}


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "format": 3, "files": None}


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3}


def read_manifest(directory: Path) -> Manifest:
    """DIR's manifest, mapped forward from older formats; a `UserError` for anything else."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory}: not a compiled model directory (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "source" not in data or not isinstance(data.get("format"), int):
        raise UserError(f"{path}: not an rnnc manifest")
    version = data["format"]
    if version > FORMAT:
        raise UserError(f"{path}: manifest format {version} is newer than this rnnc reads ({FORMAT}): upgrade rnnc")
    while version in UPGRADES:
        data = UPGRADES[version](data)
        version = data["format"]
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: not a valid rnnc manifest of format {FORMAT} ({where}: {first['msg']})") from None


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write atomically, so that a killed run never leaves half a file."""
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    return path
