"""The library API behind every command: compile, verify, load and run (SPEC section 2).

The CLI is a thin shell over these functions; tests and users call them directly.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rnnc import targets
from rnnc import pipeline
from rnnc.verify import verify as verify_runners
from rnnc.errors import UserError
from rnnc.graphs import Model, load_model, model_from_source
from rnnc.progress import SILENT, Progress
from rnnc.targets.base import Runner


def compile(  # noqa: A001 - the command's own name
    source: str | Path,
    target: str = "cpu",
    backends: Sequence[str] | None = None,
    out: str | Path | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    options: dict[str, Any] | None = None,
    progress: Progress = SILENT,
) -> tuple[dict[str, Any], Path]:
    """Build, lower and verify a spec or model file; returns the manifest and the output DIR."""
    targets.check_target(target)
    backends = list(backends) if backends is not None else targets.names()
    model = load_model(source, shapes)
    out_dir = Path(out) if out is not None else Path("build") / f"{model.name}-{target}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory")
    manifest = pipeline.compile_model(model, target, backends, out_dir, progress, options, Path(source))
    return manifest, out_dir


def open_dir(directory: str | Path) -> tuple[dict[str, Any], Model]:
    """A compiled DIR's manifest and its model rebuilt from the recorded source (spec and seed)."""
    directory = Path(directory)
    manifest = pipeline.read_manifest(directory)
    return manifest, model_from_source(manifest["source"], directory)


def load(directory: str | Path, backend: str = "onnxruntime", target: str | None = None) -> Runner:
    """A runner over one backend's artifact in DIR: `runner(**arrays) -> {output name: array}`."""
    directory = Path(directory)
    manifest = pipeline.read_manifest(directory)
    target = targets.check_target(target or manifest["target"])
    module = targets.backend(backend)
    record = manifest["backends"].get(backend)
    if record is None or not record.get("artifacts"):
        why = record.get("reason") if record else "it was not selected at compile time"
        raise UserError(f"{directory}: backend {backend!r} has no artifact ({why})")
    if target != manifest["target"] and backend == "tvm":
        raise UserError(f"{directory} was compiled for {manifest['target']}, not {target}: recompile with --target {target}")
    reason = module.available(target) or getattr(module, "can_verify", lambda t: None)(target)
    if reason:
        raise UserError(f"backend {backend!r} cannot run on {target} here: {reason}")
    return module.load(directory, manifest, target)


def verify(
    source: str | Path,
    target: str | None = None,
    backends: Sequence[str] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    progress: Progress = SILENT,
) -> dict[str, Any]:
    """Verify a compiled DIR (its artifacts, against a reference rebuilt from the source) or a
    spec/model file (compiled into a temporary DIR first). Returns a manifest-shaped record."""
    source = Path(source)
    if not source.is_dir():
        with tempfile.TemporaryDirectory(prefix="rnnc-verify-") as tmp:
            manifest, _ = compile(source, target or "cpu", backends, Path(tmp), shapes, None, progress)
            return manifest
    manifest, model = open_dir(source)
    target = targets.check_target(target or manifest["target"])
    if target != manifest["target"]:
        raise UserError(f"{source} was compiled for {manifest['target']}, not {target}: recompile with --target {target}")
    chosen = list(backends) if backends is not None else list(manifest["backends"])
    runners: dict[str, Runner] = {}
    for name in chosen:
        module = targets.backend(name)
        record = manifest["backends"].get(name)
        if record is None:
            manifest["backends"][name] = {"status": "skipped", "reason": "not compiled into this DIR",
                                          "artifacts": [], "shapes": [], "verification": None}
            continue
        if not record.get("artifacts"):
            continue  # skipped (or failed) at compile time: keep that record and its reason
        reason = module.available(target) or getattr(module, "can_verify", lambda t: None)(target)
        if reason:
            record.update(status="skipped", reason=reason, verification=None)
            continue
        try:
            runners[name] = module.load(source, manifest, target)
        except Exception as err:  # noqa: BLE001 - a broken artifact is a failed backend
            record.update(status="failed", reason=f"cannot load: {type(err).__name__}: {err}", verification=None)
    manifest["backends"] = {n: manifest["backends"][n] for n in chosen}
    results = verify_runners(model, runners, model.shapes, progress=progress)
    pipeline.apply_verification(manifest, results)
    return manifest


def run(directory: str | Path, backend: str, inputs: str | Path, out: str | Path | None = None) -> Path:
    """Run one backend on the user's arrays (an .npz keyed by input name); write every output."""
    inputs = Path(inputs)
    if not inputs.is_file():
        raise UserError(f"{inputs}: no such file")
    try:
        with np.load(inputs, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as err:
        raise UserError(f"{inputs}: not a readable .npz file ({err})") from None
    runner = load(directory, backend)
    outputs = runner(**arrays)
    out_path = Path(out) if out is not None else inputs.with_name(inputs.stem + f".{backend}.out.npz")
    np.savez(out_path, **outputs)
    return out_path
