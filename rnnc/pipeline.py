"""Stage 4, compile: lower a `Model` to every selected backend, verify each, write DIR/manifest.json;
and the way back: open a compiled DIR and load one backend's runner from it."""
from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from rnnc import host, targets
from rnnc.errors import Unsupported, UserError, interrupted
from rnnc.graphs import model_from_source
from rnnc.graphs.model import Model
from rnnc.progress import SILENT, Progress
from rnnc.records import outdir
from rnnc.records.digests import check_files, digest_dir
from rnnc.records.manifest import MANIFEST, BackendRecord, Manifest, Verification, read_manifest, write_manifest
from rnnc.targets.base import Runner
from rnnc.verify import verify

__all__ = ["MANIFEST", "check_artifacts", "compile_model", "exit_code", "load_runner", "open_dir", "read_manifest"]


def compile_model(
    model: Model,
    target: str,
    backends: Sequence[str],
    out_dir: Path,
    progress: Progress = SILENT,
    options: dict[str, Any] | None = None,
    threads: int | None = None,
) -> Manifest:
    """Build and verify every backend; a backend that cannot run is `skipped` with the reason.

    DIR appears whole or not at all (`records.outdir.replacing`): built in a staging directory
    beside it, every file's SHA-256 recorded, then moved into place; a failed or interrupted
    compile leaves the previous DIR as it was. `threads`: the pool size every backend's runner is
    verified with (None: each runtime's own).
    """
    out_dir = Path(out_dir)
    with outdir.replacing(out_dir, progress.note) as staging:
        try:
            manifest = _compile_into(model, target, backends, staging, progress, options or {}, threads)
            write_manifest(staging, manifest.model_copy(update={"files": digest_dir(staging)}))
        except (OSError, MemoryError, RuntimeError) as err:
            explained = outdir.explain(err, out_dir, staging)
            if explained is err:
                raise
            raise explained from None
    return read_manifest(out_dir)


def _compile_into(model: Model, target: str, backends: Sequence[str], out_dir: Path, progress: Progress,
                  options: dict[str, Any], threads: int | None) -> Manifest:
    if model.origin is not None and "file" in model.source:  # what `verify DIR` rebuilds from
        shutil.copyfile(model.origin, out_dir / model.source["file"])
    if model.onnx is not None:  # the exported graph, whatever the backends (none: extra["no_onnx"] says why)
        from rnnc.graphs.onnx_export import save_onnx  # torch and onnx load here, not where a DIR is only read

        save_onnx(model.onnx, out_dir / "model.onnx")
    manifest = new_manifest(model, target)

    runners: dict[str, Runner] = {}
    for i, name in enumerate(backends):
        progress.update(i, len(backends), f"build {name}")
        record, runner = _build(model, name, out_dir, target, options, manifest, threads)
        manifest = manifest.with_backend(name, record)
        if runner is not None:
            runners[name] = runner
    progress.done()
    return apply_verification(manifest, verify(model, runners, model.shapes, progress=progress))


def _build(model: Model, name: str, out_dir: Path, target: str, options: dict[str, Any], manifest: Manifest,
           threads: int | None) -> tuple[BackendRecord, Runner | None]:
    module = targets.backend(name)
    precision = targets.precision_of(name)
    skipped = BackendRecord(status="skipped", precision=manifest.precision if ":" not in name else precision)
    if reason := module.available(target):
        return skipped.but(reason=reason), None
    started = time.perf_counter()
    try:
        artifacts = targets.build(name, model, out_dir, target, options)
        built = skipped.but(artifacts=tuple(artifacts), build_time_s=round(time.perf_counter() - started, 3),
                            artifact_bytes=_size(out_dir, artifacts))
        if reason := module.runnable(target):
            return built.but(reason=f"built but not verified: {reason}"), None
        runner = targets.load(name, out_dir, manifest.with_backend(name, built), target, threads)
        return built.but(status="ok"), runner
    except Unsupported as err:
        return skipped.but(reason=str(err)), None
    except Exception as err:  # noqa: BLE001 - one backend's bug must not hide the others
        if interrupted(err):
            raise KeyboardInterrupt from err
        if outdir.out_of_resources(err):  # the machine, not the backend: the whole compile stops
            raise
        return skipped.but(status="failed", reason=f"{type(err).__name__}: {err}",
                           traceback=traceback.format_exc(limit=8)), None


def new_manifest(model: Model, target: str) -> Manifest:
    return Manifest(name=model.name, spec=model.source.get("spec"), source=model.source, target=target,
                    host=host.cpu(), versions=host.versions(),
                    io={"inputs": model.inputs, "outputs": model.outputs},
                    shapes=tuple(tuple(s) for s in model.shapes), dtype=model.dtype, state=model.state)


def apply_verification(manifest: Manifest, results: dict[str, Verification]) -> Manifest:
    """Each backend's verification stored; a backend that does not agree is `failed`."""
    backends = dict(manifest.backends)
    for name, result in results.items():
        if result.passed:
            status, reason = "ok", None
        else:
            status = "failed"
            reason = "; ".join(result.problems[:3]) or (
                f"not equivalent to the float64 reference: rel_err {result.rel_err:.3g}"
                f" > tolerance {result.tolerance:g}")
        backends[name] = backends[name].but(status=status, reason=reason, shapes=result.shapes,
                                            verification=result)
    return manifest.with_backends(backends)


def exit_code(manifest: Manifest) -> int:
    """0 all ran and agreed; 1 some backend failed; 3 nothing could run (SPEC section 2)."""
    statuses = [b.status for b in manifest.backends.values()]
    if any(s == "failed" for s in statuses):
        return 1
    if not statuses or all(s == "skipped" for s in statuses):
        return 3
    return 0


def open_dir(directory: Path) -> tuple[Manifest, Model]:
    """A compiled DIR's manifest and its model rebuilt from the recorded source (spec and seed)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if file := manifest.source.get("file"):  # the model file the reference is rebuilt from
        check_files(directory, manifest, [file])
    return manifest, model_from_source(manifest.source, directory)


def check_artifacts(directory: Path, manifest: Manifest, names: Sequence[str]) -> None:
    """`ArtifactChanged` unless every file the named backends would load is the one compile wrote
    (its SHA-256 and size in the manifest): checked before anything of DIR is loaded."""
    check_files(Path(directory), manifest,
                [a for name in names if (record := manifest.backends.get(name)) for a in record.artifacts])


def check_target(directory: Path, manifest: Manifest, target: str | None) -> str:
    """The target to run DIR on: the one it was compiled for, or a `UserError`."""
    target = targets.check_target(target or manifest.target)
    if target != manifest.target:
        raise UserError(f"{directory} was compiled for {manifest.target}, not {target}: "
                        f"recompile with --target {target}")
    return target


def load_runner(directory: Path, manifest: Manifest, name: str, target: str, threads: int | None) -> Runner:
    """Backend `name`'s runner over its artifacts in DIR; a `UserError` when it has none or cannot
    run here, `ArtifactChanged` when they are not what compile wrote."""
    module = targets.backend(name)
    record = manifest.backends.get(name)
    if record is None or not record.artifacts:
        why = record.reason if record else "it was not selected at compile time"
        raise UserError(f"{directory}: backend {name!r} has no artifact ({why})")
    if reason := module.runnable(target):
        raise UserError(f"backend {name!r} cannot run on {target} here: {reason}")
    check_artifacts(directory, manifest, [name])
    return targets.load(name, Path(directory), manifest, target, threads)


def _size(out_dir: Path, artifacts: Sequence[str]) -> int:
    total = 0
    for rel in artifacts:
        p = out_dir / rel
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return total
