"""The library API behind every command: compile, verify, load, run and bench (SPEC section 2).

The CLI is a thin shell over these functions; tests and users call them directly. `threads` is
the pool size of every runtime (default: every core this process may use; None: each runtime's
own default), passed explicitly to each backend's `load`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rnnc import host, pipeline, targets
from rnnc.bench import run_bench
from rnnc.errors import UserError
from rnnc.graphs import load_model
from rnnc.pipeline import open_dir
from rnnc.progress import SILENT, Progress
from rnnc.records.manifest import BackendRecord, Manifest
from rnnc.reports import render
from rnnc.targets.base import Runner
from rnnc.verify import verify as verify_runners
from rnnc.verify import verify_chain

__all__ = ["bench", "compile", "history", "load", "open_dir", "run", "verify"]
ALL_CORES = host.cpu_count()


def compile(  # noqa: A001 - the command's own name
    source: str | Path,
    target: str = "cpu",
    backends: Sequence[str] | None = None,
    out: str | Path | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    options: dict[str, Any] | None = None,
    progress: Progress = SILENT,
    threads: int | None = ALL_CORES,
    *,
    bind: dict[str, np.ndarray] | None = None,
    state: dict[str, str] | None = None,
) -> tuple[Manifest, Path]:
    """Build, lower and verify a spec or model file; returns the manifest and the output DIR.
    For a model file, `bind` fixes inputs to constants and `state` pairs state inputs with outputs."""
    targets.check_target(target)
    backends = targets.parse_backends(",".join(backends)) if backends is not None else list(targets.names())
    model = load_model(source, shapes, bind, state)
    out_dir = Path(out) if out is not None else Path("build") / f"{model.name}-{target}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory")
    manifest = pipeline.compile_model(model, target, backends, out_dir, progress, options, threads)
    return manifest, out_dir


def load(directory: str | Path, backend: str = "onnxruntime", target: str | None = None,
         threads: int | None = ALL_CORES) -> Runner:
    """A runner over one backend's artifact in DIR: `runner(**arrays) -> {output name: array}`."""
    directory = Path(directory)
    manifest = pipeline.read_manifest(directory)
    target = pipeline.check_target(directory, manifest, target)
    return pipeline.load_runner(directory, manifest, backend, target, threads)


def verify(
    source: str | Path,
    target: str | None = None,
    backends: Sequence[str] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    progress: Progress = SILENT,
    threads: int | None = ALL_CORES,
    *,
    bind: dict[str, np.ndarray] | None = None,
    state: dict[str, str] | None = None,
    chain: int | None = None,
) -> Manifest:
    """Verify a compiled DIR (its artifacts, against a reference rebuilt from the source) or a
    spec/model file (compiled into a temporary DIR first). Returns a manifest-shaped record.
    `chain`: also N consecutive calls with the state carried (`verify_chain`); a backend that
    passes the per-shape check is then judged, and its errors reported, over the chain."""
    source = Path(source)
    if not source.is_dir():
        with tempfile.TemporaryDirectory(prefix="rnnc-verify-") as tmp:
            manifest, _ = compile(source, target or "cpu", backends, Path(tmp), shapes, None, progress, threads,
                                  bind=bind, state=state)
            if chain:
                return verify(Path(tmp), target, backends, progress=progress, threads=threads, chain=chain)
            return manifest
    manifest, model = open_dir(source)
    if chain and not model.state:
        raise UserError(f"--chain: {source} has no state pairs (compile it with --state IN=OUT)")
    target = pipeline.check_target(source, manifest, target)
    chosen = list(backends) if backends is not None else list(manifest.backends)
    pipeline.check_artifacts(source, manifest, [n for n in chosen if not targets.backend(n).runnable(target)])
    records: dict[str, BackendRecord] = {}
    runners: dict[str, Runner] = {}
    for name in chosen:
        module = targets.backend(name)
        record = manifest.backends.get(name)
        if record is None:
            records[name] = BackendRecord(status="skipped", reason="not compiled into this DIR")
            continue
        records[name] = record
        if not record.artifacts:
            continue  # skipped (or failed) at compile time: keep that record and its reason
        if reason := module.runnable(target):
            records[name] = record.but(status="skipped", reason=reason, verification=None)
            continue
        try:
            runners[name] = targets.load(name, source, manifest, target, threads)
        except Exception as err:  # noqa: BLE001 - a broken artifact is a failed backend
            records[name] = record.but(status="failed", reason=f"cannot load: {type(err).__name__}: {err}",
                                       verification=None)
    manifest = manifest.with_backends(records)
    results = verify_runners(model, runners, model.shapes, progress=progress)
    if chain:
        chained = verify_chain(model, {n: r for n, r in runners.items() if results[n].passed}, chain,
                               progress=progress)
        results.update(chained)
    return pipeline.apply_verification(manifest, results)


def run(directory: str | Path, backend: str, inputs: str | Path, out: str | Path | None = None,
        threads: int | None = ALL_CORES) -> Path:
    """Run one backend on the user's arrays (an .npz keyed by input name); write every output."""
    inputs = Path(inputs)
    if not inputs.is_file():
        raise UserError(f"{inputs}: no such file")
    try:
        with np.load(inputs, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as err:
        raise UserError(f"{inputs}: not a readable .npz file ({err})") from None
    outputs = load(directory, backend, threads=threads)(**arrays)
    out_path = Path(out) if out is not None else inputs.with_name(inputs.stem + f".{backend.replace(':', '-')}.out.npz")
    np.savez(out_path, **outputs)
    return out_path


def history(history: str, model: str | None = None, out_dir: str | Path | None = None) -> tuple[str, list[Path]]:
    """`rnnc history`: the trend table of every row over the runs of a history (a path or an
    SQLAlchemy URL), with its steps, and `history.png` (`history-MODEL.png` with `model`) in
    `out_dir` (default: beside a history file; the current directory for a URL). Returns the
    text and the paths written; an empty history is one line and no plot."""
    from rnnc.history import describe, load
    from rnnc.reports import trend

    runs = load(history, model)
    if not runs:
        return f"{describe(history)}: no runs recorded yet (`rnnc bench ... --history` appends one)", []
    found = trend.trends(runs)
    if out_dir is None:
        out_dir = Path(".") if "://" in history else Path(history).expanduser().parent
    name = f"history-{trend.slug(model)}.png" if model is not None else "history.png"
    text = trend.table(found) + "\n" + trend.summary(runs, found) if found else trend.summary(runs, found)
    written = [trend.plot(runs, found, Path(out_dir) / name)] if found else []
    return text, written


def bench(source: str | Path, target: str = "cpu", backends: Sequence[str] | None = None, *,
          render_report: bool = True, history: str | None = None, cluster: str | None = None,
          on: Sequence[str] | None = None, **options: Any) -> dict[str, Any]:
    """`rnnc bench`: the sweep (`rnnc.bench.run_bench`, whose keyword options these are), then the
    rendered report beside report.json, then (with `history`, a path or an SQLAlchemy URL) the
    report appended to that history. Returns the report with `exit_code` and `written`.
    `stream=True` (and `chunk_ms`) is `rnnc bench --stream [--chunk-ms MS]`. `cluster` (a Ray
    address, or `local`) runs the sweep on a fleet (`rnnc.bench.fleet`), on the machine classes
    `on` picks (`--on "cpu=*EPYC*,gpu=H100"`); there `threads="all"` means each node's cores."""
    if on and cluster is None:
        raise UserError("--on picks machine classes of a cluster: give --cluster ADDRESS too")
    if history is not None:
        from rnnc import history as runs
        from rnnc.records.report import load_report

        runs.check_reachable(history)  # a bad URL is refused before the sweep, not after it
    backends = list(backends) if backends is not None else list(targets.names())
    if cluster is not None:
        from rnnc.bench.fleet import run_cluster

        report = run_cluster(source, target, backends, cluster_address=cluster, on=list(on or []), **options)
    else:
        report = run_bench(source, target, backends, **options)
    if render_report:  # an A/B bench is rendered side by side with its other half
        path = Path(report["report_path"])
        against = path.parent / report["ab"]["against"] if report.get("ab") else None
        written = render(path, against, path.parent)
        report["written"] += [str(p) for p in written]
    if history is not None:  # what was written, read back: the history keeps exactly the file
        report["history_run"] = runs.append(history, load_report(Path(report["report_path"])))
    return report
