"""Compile: lower a `Model` to every selected backend, verify each, and write DIR/manifest.json."""
from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import onnx

from rnnc import host, targets
from rnnc.verify import verify
from rnnc.graphs.model import Model
from rnnc.progress import SILENT, Progress
from rnnc.errors import Unsupported
from rnnc.targets.base import Runner

MANIFEST = "manifest.json"
FORMAT = 1


def compile_model(
    model: Model,
    target: str,
    backends: Sequence[str],
    out_dir: Path,
    progress: Progress = SILENT,
    options: dict[str, Any] | None = None,
    source_path: Path | None = None,
) -> dict[str, Any]:
    """Build and verify every backend; a backend that cannot run is `skipped` with the reason."""
    options = options or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    if source_path is not None and "file" in model.source:
        if source_path.resolve() != (out_dir / model.source["file"]).resolve():
            shutil.copyfile(source_path, out_dir / model.source["file"])
    onnx.save(model.onnx, str(out_dir / "model.onnx"))
    manifest = new_manifest(model, target)

    runners: dict[str, Runner] = {}
    for i, name in enumerate(backends):
        progress.update(i, len(backends), f"build {name}")
        record = manifest["backends"][name] = {"status": "skipped", "reason": None, "artifacts": [],
                                              "shapes": [], "verification": None}
        module = targets.backend(name)
        reason = module.available(target)
        if reason:
            record["reason"] = reason
            continue
        started = time.perf_counter()
        try:
            record["artifacts"] = module.build(model, out_dir, target, options)
            record["build_time_s"] = round(time.perf_counter() - started, 3)
            record["artifact_bytes"] = _size(out_dir, record["artifacts"])
            unverifiable = getattr(module, "can_verify", lambda t: None)(target)
            if unverifiable:
                record["reason"] = f"built but not verified: {unverifiable}"
                continue
            runners[name] = module.load(out_dir, manifest, target)
            record["status"] = "ok"
        except Unsupported as err:
            record["reason"] = str(err)
        except Exception as err:  # noqa: BLE001 - one backend's bug must not hide the others
            record.update(status="failed", reason=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc(limit=8))
    progress.done()
    _write_json(out_dir / MANIFEST, manifest)  # a record exists even if verification is interrupted

    results = verify(model, runners, model.shapes, progress=progress)
    apply_verification(manifest, results)
    _write_json(out_dir / MANIFEST, manifest)
    return manifest


def new_manifest(model: Model, target: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "name": model.name,
        "spec": model.source.get("spec"),
        "source": model.source,
        "target": target,
        "host": host.cpu(),
        "versions": host.versions(),
        "io": {"inputs": [_info(t) for t in model.inputs], "outputs": [_info(t) for t in model.outputs]},
        "shapes": [list(s) for s in model.shapes],
        "dtype": model.dtype,
        "backends": {},
    }


def apply_verification(manifest: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """Store each backend's verification; a backend that does not agree is `failed`."""
    for name, result in results.items():
        record = manifest["backends"][name]
        record["shapes"] = result["shapes"]
        record["verification"] = result
        if not result["passed"]:
            record["status"] = "failed"
            record["reason"] = "; ".join(result["problems"][:3]) or (
                f"not equivalent to the float64 reference: rel_err {result['rel_err']:.3g}"
                f" > tolerance {result['tolerance']:g}")
        else:
            record["status"], record["reason"] = "ok", None


def exit_code(manifest: dict[str, Any]) -> int:
    """0 all ran and agreed; 1 some backend failed; 3 nothing could run (SPEC section 2)."""
    statuses = [b["status"] for b in manifest["backends"].values()]
    if any(s == "failed" for s in statuses):
        return 1
    if not statuses or all(s == "skipped" for s in statuses):
        return 3
    return 0


def read_manifest(directory: Path) -> dict[str, Any]:
    from rnnc.errors import UserError

    path = directory / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory}: not a compiled model directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "source" not in manifest:
        raise UserError(f"{path}: not an rnnc manifest of format {FORMAT}")
    return manifest


def _info(t: Any) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "dims": list(t.dims), "high": t.high}


def _size(out_dir: Path, artifacts: list[str]) -> int:
    total = 0
    for rel in artifacts:
        p = out_dir / rel
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return total


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so that a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
