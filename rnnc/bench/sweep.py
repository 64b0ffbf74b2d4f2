"""`rnnc bench`: the sweep of models x shapes x backends, its rows, resume and atomic writes.

One model at a time: compile it (or open a compiled DIR), load one runner per backend for the
whole sweep of shapes, and for each (batch size, sequence length) measure every backend
interleaved on the same inputs (`measure.measure_interleaved`). After every shape the report is
rewritten atomically, so an interrupted sweep leaves a valid report and `--resume` completes it.
With `stream`, each timed call is one chunk with the state carried (`rnnc.bench.stream`).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from rnnc import host, pipeline, stats, targets
from rnnc.bench import against as ab
from rnnc.bench import measure, roof
from rnnc.bench import stream as streaming
from rnnc.bench import threads as runtime_threads
from rnnc.bench.progress import SweepProgress
from rnnc.bench.sources import (Source, default_out, fingerprint, first_step_twin, one_step_steps, open_source,
                                resolve_sources, sweep_shapes)
from rnnc.errors import OutOfResources, UserError
from rnnc.graphs.model import Model
from rnnc.progress import SILENT, Progress
from rnnc.records import outdir
from rnnc.records import report as schema
from rnnc.records.manifest import Manifest
from rnnc.records.report import Row
from rnnc.verify import compare, judge, tolerance

if TYPE_CHECKING:
    from rnnc.graphs.work import Work

REPORT = "report.json"


def run_bench(
    source: str | Path,
    target: str,
    backends: list[str],
    seq_lens: list[int] | None = None,
    batch_sizes: list[int] | None = None,
    out_dir: Path | None = None,
    resume: bool = False,
    check: bool = False,
    progress: Progress = SILENT,
    *,
    settings: measure.Settings | None = None,
    extra_work: dict[str, float] | None = None,
    seed: int = 0,
    threads: int | None = runtime_threads.DEFAULT,
    shapes: dict[str, tuple[int, ...]] | None = None,
    bind: dict[str, Any] | None = None,
    state: dict[str, str] | None = None,
    against: str | Path | None = None,
    revision: str | None = None,
    stream: bool = False,
    chunk_ms: float | None = None,
) -> dict[str, Any]:
    """Bench a spec, a model file, a compiled DIR or a folder of specs; returns the report with
    `exit_code`, `report_path` and `written` added (0 ok; 1 a backend failed or was wrong under
    `check`; 3 nothing ran). Rendering the report is the caller's (`rnnc.api.bench`).

    `threads` limits every runtime to that many threads (default: every core; None: each
    runtime's own default); see `rnnc.bench.threads`. `extra_work` is TEST-ONLY (see `measure.with_extra_work`):
    {backend: fraction} makes that backend do that fraction more work per call; the report records
    it on the rows it touched. `shapes`, `bind` and `state` are a model file's import options
    (as `rnnc compile --shapes / --bind / --state`).

    `against` (a compiled DIR, or an earlier bench's --out) makes it an A/B bench (`rnnc.bench.
    against`): each backend of both builds measured in the same rounds; the old side's rows are
    written to `OUT/against/report.json`. `revision` (the user's commit) is recorded in the
    report's environment, for a history to name the commit range of a step.

    `stream` (`--stream`) times each call as one chunk of seq_len steps with the state carried
    from the call before, for models with state pairs; `chunk_ms` is the real time one chunk
    stands for, which adds the real-time factor to the rows (`rnnc.bench.stream`).
    """
    targets.check_target(target)
    streamed = streaming.check_options(stream, chunk_ms)
    check_sizes("--seq-lens", seq_lens)
    check_sizes("--batch-sizes", batch_sizes)
    backends = check_backends(backends)
    settings = settings or measure.Settings()
    sources = resolve_sources(Path(source))
    out_dir = Path(out_dir) if out_dir is not None else default_out(Path(source), sources, target)
    in_force = runtime_threads.in_force(threads)
    old_dirs = None
    if against is not None:
        if resume:
            raise UserError("--resume with --against: an A/B bench's two sides must be measured together; "
                            "rerun it whole")
        old_dirs = ab.resolve(Path(against))
    with runtime_threads.kept_torch_threads():
        report = start_report(out_dir / REPORT, resume, target, settings, check, extra_work, threads, in_force,
                               streamed)
        if revision:
            report["environment"]["revision"] = revision
        pair = None
        if old_dirs is not None:
            run = ab.new_run_id()
            report["ab"] = {"run": run, "role": "new", "against": f"{ab.AGAINST}/{REPORT}"}
            pair = (ab.half_report(report, run), old_dirs)
        _sweep_all(report, out_dir / REPORT, sources, target, backends, seq_lens, batch_sizes, settings, check,
                   resume, extra_work or {}, seed, progress, threads,
                   {"shapes": shapes, "bind": bind, "state": state}, pair, streamed)
    written = [str(out_dir / REPORT)] + ([str(out_dir / ab.AGAINST / REPORT)] if pair else [])
    return dict(report, exit_code=exit_code(report), report_path=str(out_dir / REPORT), written=written)


def _sweep_all(report: dict[str, Any], report_path: Path, sources: list[Source], target: str,
               backends: list[str], seq_lens: list[int] | None, batch_sizes: list[int] | None,
               settings: measure.Settings, check: bool, resume: bool, extra_work: dict[str, float], seed: int,
               progress: Progress, threads: int | None, imports: dict[str, Any],
               pair: tuple[dict[str, Any], dict[str, Path]] | None = None,
               streamed: streaming.Options | None = None) -> None:
    out_dir = report_path.parent
    old_path = out_dir / ab.AGAINST / REPORT
    plans = [(src, sweep_shapes(src.shapes, seq_lens, batch_sizes, src.fixed_seq)) for src in sources]
    for _, shapes in plans:  # refused before any compile where the shapes are known
        streaming.check_chunk_lengths(streamed, {s for _, s in shapes or []})
    bar = SweepProgress(progress, sum(len(shapes) * len(backends) for _, shapes in plans if shapes is not None))
    for src, shapes in plans:
        model, manifest, model_dir = open_source(src, shapes, target, backends, out_dir, len(sources) > 1,
                                                 resume, bar.child(), imports, threads, streamed is not None,
                                                 lambda name=src.path.name: bar.show(f"{name}: compiling"))
        if shapes is None:
            shapes = sweep_shapes(model.shapes, seq_lens, batch_sizes, _fixed_seq(model))
            streaming.check_chunk_lengths(streamed, {s for _, s in shapes})
            bar.grow(len(shapes) * len(backends))
        _record_model(report, model, manifest, model_dir, src.path, out_dir)
        old = None
        if pair is not None:
            old = ab.open_old(pair[1], model, target, pair[0], old_path)
            _record_model(old.report, old.model, old.manifest, old.model_dir, old.model_dir, old_path.parent)
        _sweep_model(report, report_path, model, manifest, model_dir, target, backends, shapes, settings,
                     check, extra_work, seed, bar, threads, old, streamed)
    bar.close()
    report["finished"] = True
    save(report_path, report)
    if pair is not None:
        pair[0]["finished"] = True
        save(old_path, pair[0])


def save(path: Path, report: dict[str, Any]) -> None:
    """report.json rewritten after each row; out of disk space, the sweep stops with one line and the
    file keeps every row finished before (the write is atomic), for `--resume` to complete."""
    try:
        schema.write_atomic(path, report)
    except OSError as err:
        if not outdir.out_of_resources(err):
            raise
        try:
            kept = len(json.loads(path.read_text()).get("rows", []))
        except (OSError, ValueError):
            kept = 0
        free = shutil.disk_usage(path.parent).free / 2**20
        raise OutOfResources(f"{path}: no space left on device ({free:.1f} MiB free): the bench stopped; "
                             f"the {kept} rows finished before are kept in it: free space and rerun with --resume"
                             ) from None


def _fixed_seq(model: Model) -> int | None:
    return one_step_steps(model.source.get("spec")) if model.source.get("kind") == "spec" else None


def exit_code(report: dict[str, Any]) -> int:
    """1 when a row failed (a backend crashed, or was wrong under --check); 3 when no row ran."""
    rows = report["rows"]
    if any(r["status"] == "failed" for r in rows):
        return 1
    if not any(r["status"] == "ok" for r in rows):
        return 3
    return 0


def check_sizes(flag: str, values: list[int] | None) -> None:
    if values is None:
        return
    if not values or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        shown = ",".join(map(str, values)) or "nothing"
        raise UserError(f"{flag}: every value must be an integer >= 1, got {shown}")


def check_backends(backends: Sequence[str]) -> list[str]:
    if not backends:
        raise UserError("--backends: no backend selected")
    return targets.parse_backends(",".join(backends))


def start_report(path: Path, resume: bool, target: str, settings: measure.Settings, check: bool,
                  extra: dict[str, float] | None, threads: int | str | None, in_force: dict[str, Any] | None,
                  streamed: streaming.Options | None = None, fleet: bool = False) -> dict[str, Any]:
    """A new report (this machine's environment and roof), or under `resume` the one at `path`
    when it was measured as this run will be. A fleet's driver (`fleet`, `in_force` None) records
    no threads or roof of its own: each node's are in the report's `cluster.nodes`."""
    record = dict(asdict(settings), check=check, threads=threads)
    if streamed is not None:  # a plain report's settings stay as they were
        record.update(stream=True, chunk_ms=streamed.chunk_ms)
    if resume and path.exists():
        report = schema.load_report(path)
        if report.get("kind") != "rnnc":
            raise UserError(f"{path}: --resume needs an rnnc report, not a {report.get('kind')} one")
        if report["target"] != target:
            raise UserError(f"{path}: --resume of a {report['target']} report with --target {target}")
        if report["settings"].get("threads") != threads:
            was = report["settings"].get("threads")
            raise UserError(f"{path}: --resume of a report measured with threads={was} with threads={threads}")
        was = _stream_flags(report["settings"].get("stream", False), report["settings"].get("chunk_ms"))
        now = _stream_flags(streamed is not None, streamed.chunk_ms if streamed else None)
        if was != now:  # a report holds one kind of row: stream rows come only from --stream runs
            raise UserError(f"{path}: --resume of a report measured {was}, now {now}: a report holds one kind of row")
        if bool(report.get("cluster")) != fleet:
            was, now = (("with", "without") if report.get("cluster") else ("without", "with"))
            raise UserError(f"{path}: --resume of a report measured {was} --cluster, {now} it now: "
                            f"a report holds the rows of one kind of run")
        report["finished"] = False
        report.setdefault("resumed", []).append(record)
    else:
        environment = host.environment()
        if in_force is not None:
            environment["threads"] = in_force
        report = schema.new_report(target, environment, record)
        report["calibration"]["workload"] = measure.CALIBRATION
    if extra:
        report["test_extra_work"] = dict(extra)
    if in_force is not None:
        report["environment"].setdefault("roof", roof.measured(in_force["torch_intra_op"]).to_json())
    return report


def _stream_flags(stream: bool, chunk_ms: float | None) -> str:
    if not stream:
        return "without --stream"
    return "with --stream" + (f" --chunk-ms {chunk_ms:g}" if chunk_ms is not None else "")


def report_relative(path: Path, start: Path) -> str:
    """Where a compiled model lies, relative to the report when it is under it."""
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def _record_model(report: dict[str, Any], model: Model, manifest: Manifest, model_dir: Path,
                  path: Path, report_dir: Path) -> None:
    record = dict(model_record(model, manifest), source=str(path), dir=report_relative(model_dir, report_dir))
    add_model(report, model.name, record)


def add_model(report: dict[str, Any], name: str, record: dict[str, Any]) -> None:
    """Record a model in the report; one of the same name from another spec is refused."""
    previous = report["models"].get(name)
    if previous is not None and previous.get("fingerprint") != record.get("fingerprint"):
        raise UserError(f"model {name!r} from {record.get('source')} differs from the one already in the report "
                        f"(from {previous.get('source')}): use another --out, or rename one of them")
    report["models"][name] = record


def model_record(model: Model, manifest: Manifest) -> dict[str, Any]:
    """What the report keeps of a compiled model: its fingerprint, spec, inputs and outputs, and
    each backend's build (status, time, size, verification error), in table order."""
    build = {}
    for name, b in sorted(manifest.backends.items(), key=lambda kv: targets.sort_key(kv[0])):
        build[name] = {"status": b.status, "reason": b.reason, "build_time_s": b.build_time_s,
                       "artifact_bytes": b.artifact_bytes, "precision": b.precision,
                       "rel_err": b.verification.rel_err if b.verification else None}
    return {"fingerprint": fingerprint(model), "spec": model.source.get("spec"),
            "io": manifest.io.model_dump(mode="json"), "backends": build}


def _sweep_model(report: dict[str, Any], report_path: Path, model: Model, manifest: Manifest,
                 model_dir: Path, target: str, backends: list[str], shapes: list[tuple[int, int]],
                 settings: measure.Settings, check: bool, extra_work: dict[str, float], seed: int,
                 bar: SweepProgress, threads: int | None,
                 old: ab.OldSide | None = None, streamed: streaming.Options | None = None) -> None:
    mode = None if streamed is None else "stream"
    todo = missing(model.name, backends, shapes, {schema.row_key(r) for r in report["rows"]}, mode)
    bar.skip(sum(len(backends) - len(v) for v in todo.values()))
    for done in shape_rows(report, report_path.parent, model, manifest, model_dir, target, backends, todo,
                           settings, check, extra_work, seed, bar, threads, old, streamed):
        report["rows"] += [r.to_json() for r in done.rows]
        report["rows"].sort(key=row_order(report))
        save(report_path, report)
        if old is not None:
            old.report["rows"] += [r.to_json() for r in done.old_rows]
            old.report["rows"].sort(key=row_order(old.report))
            save(old.path, old.report)
        bar.measured(done.count, done.seconds)
    bar.show(f"{model.name} done")


def missing(model: str, backends: list[str], shapes: list[tuple[int, int]], have: set[schema.RowKey],
            mode: str | None = None, machine: str | None = None) -> dict[tuple[int, int], list[str]]:
    """The backends each (batch, seq) still needs: those whose row is not among `have`."""
    return {(b, s): [n for n in backends if schema.key_of(model, n, b, s, mode, machine) not in have]
            for b, s in shapes}


@dataclass(frozen=True)
class ShapeDone:
    """One (batch, seq) of a model measured: its finished rows (the old side's, of an A/B bench),
    how many rows it stands for and how long it took."""

    batch: int
    seq: int
    rows: tuple[Row, ...]
    old_rows: tuple[Row, ...]
    count: int
    seconds: float


def shape_rows(report: dict[str, Any], work_dir: Path, model: Model, manifest: Manifest, model_dir: Path,
               target: str, backends: list[str], todo: dict[tuple[int, int], list[str]],
               settings: measure.Settings, check: bool, extra_work: dict[str, float], seed: int,
               bar: SweepProgress, threads: int | None, old: ab.OldSide | None = None,
               streamed: streaming.Options | None = None) -> Iterator[ShapeDone]:
    """The rows of `todo`, one shape at a time, every backend interleaved on the same inputs, each
    shape's rows as soon as they are done: what a one-machine sweep saves after every shape and a
    fleet's node (`rnnc.bench.job`) sends back to the driver. Calibration samples go to `report`,
    and the rows' roofline figures come from its environment's roof. A generative model's
    one-step twin is compiled into `work_dir`."""
    mode = None if streamed is None else "stream"
    needed = {n for names in todo.values() for n in names}
    runners, not_run = _load_runners(manifest, model_dir, backends, needed, target, threads)
    if runners and streaming.generation_steps(model) and model.spec is not None:  # first_step_ms
        twin_dir, names = work_dir / f"{model.name}-first-step", sorted(runners)
        twin = first_step_twin(model, target, names, twin_dir, threads,
                               lambda: bar.show(f"{model.name}: compiling its one-step twin"))
        for name, runner in _load_runners(twin, twin_dir, names, set(names), target, threads)[0].items():
            runners[name].bind_first_step = runner.bind
    if old is not None:
        old.runners, old.not_run = _load_runners(old.manifest, old.model_dir, backends, needed, target, threads)
    calibration = measure.calibration_workload()
    machine = roof.Roof.from_json(report["environment"].get("roof"))
    for (batch, seq), names in todo.items():
        if not names:
            continue
        bar.show(f"{model.name} batch {batch} seq {seq}")
        started = time.perf_counter()
        rows = [_not_run_row(model.name, n, batch, seq, *not_run[n], mode=mode) for n in names if n in not_run]
        old_runners = {n + ab.SUFFIX: old.runners[n] for n in names if n in old.runners} if old else {}
        measured = _measure_shape(model, {n: runners[n] for n in names if n in runners} | old_runners, batch,
                                  seq, settings, check, extra_work, seed, calibration, report, streamed)
        rows += [r for r in measured if not r.backend.endswith(ab.SUFFIX)]
        work = _work(model, batch, seq)
        finished = tuple(roof.with_roof(_with_precision(r, manifest), work, machine) for r in rows)
        old_rows: tuple[Row, ...] = ()
        if old is not None:
            olds = [_not_run_row(model.name, n, batch, seq, *old.not_run[n], mode=mode)
                    for n in names if n in old.not_run]
            olds += [r.model_copy(update={"backend": r.backend.removesuffix(ab.SUFFIX)}) for r in measured
                     if r.backend.endswith(ab.SUFFIX)]
            old_work = _work(old.model, batch, seq)
            old_rows = tuple(roof.with_roof(_with_precision(r, old.manifest), old_work, machine) for r in olds)
        yield ShapeDone(batch, seq, finished, old_rows, len(names), time.perf_counter() - started)


def _load_runners(manifest: Manifest, model_dir: Path, backends: list[str], needed: set[str], target: str,
                  threads: int | None) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """A runner for every backend a sweep still needs, and (status, reason) of the others. A DIR
    whose files are not those compile wrote is refused whole (`ArtifactChanged`) before any load."""
    pipeline.check_artifacts(model_dir, manifest, [n for n in backends if n in needed and n in manifest.backends
                                                   and manifest.backends[n].status == "ok"])
    runners, not_run = {}, {}
    for name in backends:
        record = manifest.backends.get(name)
        if record is None:
            not_run[name] = ("skipped", f"not compiled into {model_dir}")
        elif record.status != "ok":
            not_run[name] = (record.status, record.reason or record.status)
        elif name in needed:
            try:
                runners[name] = targets.load(name, model_dir, manifest, target, threads)
            except Exception as err:  # noqa: BLE001 - a broken artifact is that backend's failed row
                not_run[name] = ("failed", f"cannot load: {type(err).__name__}: {err}")
    return runners, not_run


def _measure_shape(model: Model, runners: dict[str, Any], batch: int, seq: int, settings: measure.Settings,
                   check: bool, extra_work: dict[str, float], seed: int, calibration: measure.TimeFunc,
                   report: dict[str, Any], streamed: streaming.Options | None = None) -> list[Row]:
    """Rows for one (batch, seq): every runner's bound call checked (under --check) and timed, on
    the same inputs: what is checked is exactly what is timed. Streamed, the call is the next
    chunk of the backend's own stream, the first one checked (from the zero state)."""
    if not runners:
        return []
    mode = None if streamed is None else "stream"
    if streamed is None:
        inputs = model.random_inputs(batch, seq, np.random.default_rng([seed, batch, seq]))
    else:
        pool, start = streaming.chunks(model, batch, seq, seed), streaming.zero_state(model, batch, seq)
        inputs = {**pool[0], **start}
    rows, funcs, checks, streams = [], {}, {}, {}
    steps = streaming.generation_steps(model)
    reference = None
    if check:
        reference = {k: np.asarray(v) for k, v in model.reference64(inputs).items()}  # kinds kept (verify._kind)
    for name, runner in runners.items():
        try:
            if streamed is None:
                call = runner.bind(**inputs)
            else:
                call = streams[name] = streaming.Stream(runner, pool, model.state, start)
            outputs = call()  # a backend that cannot run this shape fails here, not in the rounds
            if reference is not None:
                checks[name] = _check(outputs, reference, model.dtype, targets.precision_of(name))
                if not checks[name]["passed"]:
                    rows.append(_not_run_row(model.name, name, batch, seq, "failed", checks[name]["reason"],
                                             check=checks[name], mode=mode))
                    continue
            timed = measure.with_extra_work(call, extra_work.get(name, 0.0))
            funcs[name] = measure.time_calls(timed) if streamed is None else streams[name].timer(timed)
            if streamed is not None:
                funcs[name + streaming.BIND] = measure.time_calls(lambda r=runner: r.bind(**inputs))
            if steps is not None and (first := streaming.first_step_call(runner, inputs)) is not None:
                funcs[name + streaming.FIRST_STEP] = measure.time_calls(first)
        except Exception as err:  # noqa: BLE001 - one backend's crash is its failed row, not the sweep's
            rows.append(_not_run_row(model.name, name, batch, seq, "failed", f"{type(err).__name__}: {err}",
                                     mode=mode))
    if not funcs:
        return rows
    results, cal = measure.measure_interleaved(funcs, settings, calibration)
    add_calibration(report["calibration"], cal.samples_ms or cal.preempted_ms)
    for name in (n for n in results if n in runners):
        row = _timed_row(model.name, name, batch, seq, results[name], settings, checks.get(name),
                         extra_work.get(name))
        extra = streaming.row_fields(row.median_ms, row.warning, streamed, streams.get(name), steps,
                                     _median(results.get(name + streaming.BIND)),
                                     _median(results.get(name + streaming.FIRST_STEP)))
        rows.append(Row.model_validate({**row.model_dump(), **extra}) if extra else row)
    return rows


def _median(m: measure.Measurement | None) -> float | None:
    """The median of a side measurement (the floor, the first step), preempted samples if no other."""
    if m is None or not (m.samples_ms or m.preempted_ms):
        return None
    return stats.median(m.samples_ms or m.preempted_ms)


def _check(outputs: dict[str, Any], reference: dict[str, np.ndarray], dtype: str, precision: str) -> dict[str, Any]:
    limit = tolerance(dtype, precision)
    errors = compare(outputs, reference)
    passed, why = judge(errors, limit)
    return {"max_abs_err": errors.max_abs_err, "rel_err": errors.rel_err, "tolerance": limit,
            "passed": passed, "reason": None if passed else f"--check: {why}"}


def _timed_row(model: str, backend: str, batch: int, seq: int, m: measure.Measurement,
               settings: measure.Settings, check: dict[str, Any] | None, extra: float | None) -> Row:
    samples, warnings = m.samples_ms, []
    if len(samples) < min(measure.MIN_COUNT_FLOOR, settings.min_count):
        samples = m.samples_ms + m.preempted_ms
        warnings.append(f"machine busy: only {len(m.samples_ms)} samples ran without waiting for a CPU, "
                        f"so the {len(m.preempted_ms)} preempted ones are counted too")
    elif len(m.preempted_ms) > len(m.samples_ms):
        warnings.append(f"machine busy: {len(m.preempted_ms)} preempted samples set aside")
    summary = stats.summarize(samples)
    if summary["cv"] > settings.cv_warn:
        warnings.append(f"cv {summary['cv']:.1%} > {settings.cv_warn:.0%}: spread too high to trust")
    if len(samples) < settings.min_count:
        warnings.append(f"only {len(samples)} samples: the row ran past {settings.max_row_s:g}s")
    return Row(
        model=model, backend=backend, batch_size=batch, seq_len=seq, status="ok",
        samples_ms=[round(v, 6) for v in samples],
        preempted_ms=[round(v, 6) for v in m.preempted_ms],
        **{k: round(v, 6) for k, v in summary.items()},
        **{k: round(v, 3) for k, v in stats.throughput(summary["median_ms"], batch, seq).items()},
        loops=m.loops, warmup_calls=len(m.warmup_ms), first_call_ms=round(m.warmup_ms[0], 6),
        warning="; ".join(warnings) or None, check=check, test_extra_work=extra or None,
    )


def _not_run_row(model: str, backend: str, batch: int, seq: int, status: str, reason: str,
                 check: dict[str, Any] | None = None, mode: str | None = None) -> Row:
    return Row(model=model, backend=backend, batch_size=batch, seq_len=seq, status=status, reason=reason,
               check=check, mode=mode)


def _work(model: Model, batch: int, seq: int) -> Work | None:
    """The model's work at one shape for the rows' roofline figures (`rnnc.graphs.work`, which
    loads onnx: imported here, so that a fleet's driver, which measures nothing, starts without it)."""
    from rnnc.graphs.work import model_work

    return model_work(model.onnx, model.inputs, batch, seq)


def _with_precision(row: Row, manifest: Manifest) -> Row:
    record = manifest.backends.get(row.backend)
    return row.model_copy(update={"precision": record.precision if record else manifest.precision})


def add_calibration(cal: dict[str, Any], samples: list[float]) -> None:
    """Calibration samples added to a report's (or a node's) record, its summary updated."""
    cal["samples_ms"] = cal.get("samples_ms", []) + [round(v, 6) for v in samples]
    if cal["samples_ms"]:
        cal.update({k: round(v, 6) for k, v in stats.summarize(cal["samples_ms"]).items()})


def row_order(report: dict[str, Any]):  # noqa: ANN202
    models = {name: i for i, name in enumerate(report["models"])}
    return lambda r: (models.get(r["model"], 99), r.get("machine") or "", targets.sort_key(r["backend"]),
                      r["batch_size"], r["seq_len"])
