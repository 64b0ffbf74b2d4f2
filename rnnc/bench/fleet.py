"""`rnnc bench --cluster`: the sweep across a fleet of machines, on Ray (SPEC section 4).

The work is split into jobs, one per model and machine class: a node of the class compiles the
model (TVM for its own ISA) and measures every backend and shape of it interleaved, as a
one-machine bench does (`rnnc.bench.job`), so that side-by-side ratios stay honest. Ray places
each job by the class's node label and the node's one bench slot, never two benches on one
node's cores; this module only submits the jobs and keeps the report.

Each shape's rows come back as soon as they are done, are tagged with the node and its class,
and report.json is rewritten atomically after each, as a one-machine sweep does. A job whose node
is lost (or whose worker dies) is submitted again for the rows still missing, with the compiled
DIR shipped rather than compiled again, and lands on another node of the class; when none is
left, its missing rows are `failed` with the reason. Ctrl-C cancels the jobs and keeps what is
done; `--resume` completes it. `report.json` gains a `cluster` section: each class with its
nodes and builds, each node with its environment and calibration, and the log of every job.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rnnc import host, pipeline, targets
from rnnc.bench import cluster, measure, sweep
from rnnc.bench import job as jobs
from rnnc.bench import stream as streaming
from rnnc.bench.progress import SweepProgress
from rnnc.bench.sources import (Source, default_out, fingerprint, one_step_steps, resolve_sources, spec_fingerprint,
                                sweep_shapes)
from rnnc.bench.stream import require_state
from rnnc.errors import INTERRUPTED, UserError
from rnnc.graphs import load_model, load_spec
from rnnc.progress import SILENT, Progress
from rnnc.records import report as schema
from rnnc.records.manifest import MANIFEST, read_manifest

MAX_IDLE_ATTEMPTS = 3  # a job rerun this many times without a new row is failed, not rerun again
WATCH_S = 3.0  # how often the driver looks for classes that lost every node


@dataclass(frozen=True)
class Plan:
    """One model of the sweep: where it comes from, its name and fingerprint, its shapes."""

    source: Source
    name: str
    fingerprint: str
    shapes: tuple[tuple[int, int], ...]
    record: dict[str, Any] | None = None  # a compiled DIR's model record: no job compiles it, none sends one


def run_cluster(source: str | Path, target: str, backends: list[str], seq_lens: list[int] | None = None,
                batch_sizes: list[int] | None = None, out_dir: Path | None = None, resume: bool = False,
                check: bool = False, progress: Progress = SILENT, *, cluster_address: str,
                on: list[str] | None = None, settings: measure.Settings | None = None,
                extra_work: dict[str, float] | None = None, seed: int = 0, threads: int | str | None = "all",
                shapes: dict[str, tuple[int, ...]] | None = None, bind: dict[str, Any] | None = None,
                state: dict[str, str] | None = None, against: str | Path | None = None,
                revision: str | None = None, stream: bool = False, chunk_ms: float | None = None) -> dict[str, Any]:
    """`run_bench`'s sweep on the Ray cluster at `cluster_address` (`local`: one started on this
    machine for the run), on the machine classes `on` picks (`cluster.parse_on`; default all);
    the same report, its rows tagged with `node` and `machine`. `threads="all"` is every core of
    the node that runs each job. Everything a user can get wrong is refused before any job runs."""
    targets.check_target(target)
    streamed = streaming.check_options(stream, chunk_ms)
    sweep.check_sizes("--seq-lens", seq_lens)
    sweep.check_sizes("--batch-sizes", batch_sizes)
    backends = sweep.check_backends(backends)
    if against is not None:
        raise UserError("--against with --cluster: an A/B bench measures both builds in one process on one "
                        "machine; run it without --cluster")
    settings = settings or measure.Settings()
    selectors = cluster.parse_on(on)
    sources = resolve_sources(Path(source))
    out_dir = Path(out_dir) if out_dir is not None else default_out(Path(source), sources, target)
    imports = {"shapes": shapes, "bind": bind, "state": state}
    plans = _plans(sources, target, seq_lens, batch_sizes, imports, streamed)
    path = out_dir / sweep.REPORT
    with cluster.connected(cluster_address) as ray:
        classes = cluster.select(cluster.bench_nodes(ray), selectors, on or [])
        report = sweep.start_report(path, resume, target, settings, check, extra_work, threads, None, streamed,
                                    fleet=True)
        if revision:
            report["environment"]["revision"] = revision
        section = report.setdefault("cluster", {"classes": {}, "nodes": {}, "jobs": []})
        section.update(address=cluster_address, on=list(on or []))
        for name, members in classes.items():
            machine = members[0].machine
            entry = section["classes"].setdefault(name, {"models": {}})
            entry.update(cpu=machine.cpu, isa=machine.isa, gpu=machine.gpu)
        for plan in plans:
            _check_fingerprint(report, plan)
            if plan.record is not None:  # a compiled DIR, shipped as it is to every class
                where = sweep.report_relative(plan.source.path, path.parent)
                sweep.add_model(report, plan.name, dict(plan.record, source=str(plan.source.path), dir=where))
                for name in classes:
                    section["classes"][name]["models"][plan.name] = {"dir": where, "backends": plan.record["backends"]}
        job = dict(target=target, backends=tuple(backends), settings=settings, check=check, seed=seed,
                   threads=threads, imports=imports, streamed=streamed, extra_work=dict(extra_work or {}))
        Driver(ray, report, path, plans, classes, job, progress, resume).run()
    return dict(report, exit_code=sweep.exit_code(report), report_path=str(path), written=[str(path)])


def _plans(sources: list[Source], target: str, seq_lens: list[int] | None, batch_sizes: list[int] | None,
           imports: dict[str, Any], streamed: streaming.Options | None) -> list[Plan]:
    """Every model's name, fingerprint and shapes, known before any job: a spec is read (built
    only under --stream, to check its state), a model file loaded, a compiled DIR opened."""
    plans: dict[str, Plan] = {}
    for src in sources:
        record = None
        if src.compiled:
            manifest, model = pipeline.open_dir(src.path)
            pipeline.check_target(src.path, manifest, target)
            name, fp, defaults, fixed = model.name, fingerprint(model), src.shapes, src.fixed_seq
            record = sweep.model_record(model, manifest)
        elif src.shapes is not None:  # a spec
            spec = load_spec(src.path)
            model = load_model(src.path) if streamed is not None else None
            name, fp, defaults, fixed = spec.name, spec_fingerprint(spec.normalised()), src.shapes, src.fixed_seq
        else:
            model = load_model(src.path, **imports)
            spec = model.source.get("spec") if model.source.get("kind") == "spec" else None
            name, fp, defaults, fixed = model.name, fingerprint(model), model.shapes, one_step_steps(spec)
        if streamed is not None:
            require_state(model, src.path)
        shapes = sweep_shapes(defaults, seq_lens, batch_sizes, fixed)
        streaming.check_chunk_lengths(streamed, {s for _, s in shapes})
        if name in plans:
            raise UserError(f"model {name!r} from {src.path} has the name of the one from {plans[name].source.path}: "
                            f"rename one of them")
        plans[name] = Plan(src, name, fp, tuple(shapes), record)
    return list(plans.values())


def _check_fingerprint(report: dict[str, Any], plan: Plan) -> None:
    previous = report["models"].get(plan.name)
    if previous is not None and previous.get("fingerprint") != plan.fingerprint:
        raise UserError(f"model {plan.name!r} from {plan.source.path} differs from the one already in the report "
                        f"(from {previous.get('source')}): use another --out, or rename one of them")


@dataclass
class _Job:
    """The driver's state of one (model, class) job: its attempts and where it stands."""

    id: int
    plan: Plan
    machine: str
    attempts: int = 0
    node: str | None = None
    rows: int = 0  # rows received from the current attempt
    rows_before: int = 0  # rows received when the current attempt was submitted
    submitted: float = 0.0  # when the current attempt was submitted (time.monotonic)
    heard: float = 0.0  # when its last rows came (or it was submitted): the pace of the progress bar
    compiled: Path | None = None  # the DIR compiled for this class, shipped to a rerun


class Driver:
    """Submits the jobs, files each message as it comes (rows, builds, nodes), reruns lost jobs."""

    def __init__(self, ray: ModuleType, report: dict[str, Any], path: Path, plans: list[Plan],
                 classes: dict[str, list[cluster.Node]], options: dict[str, Any], progress: Progress,
                 resume: bool = False) -> None:
        self.ray, self.report, self.path, self.options, self.resume = ray, report, path, options, resume
        self.mode = None if options["streamed"] is None else "stream"
        self.section = report["cluster"]
        self.names = {n.id: n.name for members in classes.values() for n in members}
        self.task = jobs.remote(ray)
        self.payloads: dict[str, Any] = {}
        self.running: dict[Any, _Job] = {}
        self.jobs = [_Job(i, plan, name) for i, (plan, name) in
                     enumerate((p, c) for p in plans for c in classes)]
        self.bar = SweepProgress(progress, sum(len(p.shapes) * len(options["backends"]) for p in plans) * len(classes))

    def run(self) -> None:
        try:
            for job in self.jobs:
                self.bar.skip(self._expected(job) - self._rows_missing(job))
                if self._rows_missing(job):
                    job.compiled = self._kept_build(job) if self.resume else None
                    self._submit(job)
            watched = time.monotonic()
            while self.running:  # asleep until a job has a message or has ended, or the watch is due
                self.ray.wait(list(self.running), num_returns=1, timeout=WATCH_S)
                if INTERRUPTED.is_set():  # a Ctrl-C that Ray's wait took in and did not raise
                    raise KeyboardInterrupt
                for ready in self._ready():
                    self._take(ready)
                if time.monotonic() - watched > WATCH_S:
                    self._abandon_orphans()
                    watched = time.monotonic()
        except BaseException:  # Ctrl-C (or a bug): keep every row that came back, stop the jobs
            try:
                for ready in self._ready():
                    self._take(ready, timeout=5)
            finally:
                for ref in self.running:
                    self.ray.cancel(ref, force=True)
                sweep.save(self.path, self.report)
            raise
        finally:
            self.bar.close()
        self.report["finished"] = True
        sweep.save(self.path, self.report)

    def _ready(self) -> list[Any]:
        """The running jobs that have a message waiting, or have ended."""
        return self.ray.wait(list(self.running), num_returns=len(self.running), timeout=0)[0] if self.running else []

    def _take(self, ref: Any, timeout: float | None = None) -> None:
        """A ready job's next message, filed; or its end: done, failed, or lost with its node."""
        job = self.running[ref]
        try:
            message = self.ray.get(next(ref), timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:  # (Ctrl-C's bounded wait) the job runs on until cancelled
            return
        except (StopIteration, self.ray.exceptions.RayError) as end:
            del self.running[ref]
            self._ended(job, end)
        else:
            getattr(self, f"_on_{message['kind']}")(job, message)

    def _ended(self, job: _Job, end: BaseException) -> None:
        if isinstance(end, StopIteration):
            self._log(job, "done")
            if self._rows_missing(job):  # cannot happen unless a node sent fewer rows than asked
                self._fail(job, "the bench job ended without measuring this row")
        elif isinstance(end, self.ray.exceptions.RayTaskError):  # the job itself raised: a rerun would too
            self._log(job, f"failed: {_reason(end)}")
            self._fail(job, f"the bench job failed on {job.node}: {_reason(end)}")
        else:  # the node or its worker was lost
            self._lost(job, end)

    def _expected(self, job: _Job) -> int:
        return len(job.plan.shapes) * len(self.options["backends"])

    def _missing(self, job: _Job) -> dict[tuple[int, int], list[str]]:
        have = {schema.row_key(r) for r in self.report["rows"]}
        return sweep.missing(job.plan.name, list(self.options["backends"]), list(job.plan.shapes), have, self.mode,
                             job.machine)

    def _rows_missing(self, job: _Job) -> int:
        return sum(len(v) for v in self._missing(job).values())

    def _kept_build(self, job: _Job) -> Path | None:
        """Under --resume, the DIR an earlier run compiled for this class, when it still serves: the
        report recorded the model (whose fingerprint `run_cluster` checked against the source's),
        and the DIR has every backend and shape for this target."""
        directory = self.path.parent / job.machine / job.plan.name
        if job.plan.name not in self.report["models"] or not (directory / MANIFEST).is_file():
            return None
        manifest = read_manifest(directory)
        built = {tuple(s) for s in manifest.shapes}
        ok = (manifest.target == self.options["target"] and all(b in manifest.backends for b in self.options["backends"])
              and built >= set(job.plan.shapes))
        return directory if ok else None

    def _submit(self, job: _Job) -> None:
        job.attempts += 1
        job.rows_before, job.node, job.submitted = job.rows, None, time.monotonic()
        job.heard = job.submitted
        compiled = job.compiled is not None or job.plan.source.compiled
        if job.compiled is not None:
            payload = self.ray.put(jobs.pack(job.compiled))
        else:
            payload = self.payloads.get(job.plan.name)
            if payload is None:
                src = job.plan.source
                data = jobs.pack(src.path) if src.compiled else src.path.read_bytes()
                payload = self.payloads[job.plan.name] = self.ray.put(data)
        spec = jobs.JobSpec(job=job.id, attempt=job.attempts, model=job.plan.name, machine=job.machine,
                            source_name=job.plan.source.path.name, compiled=compiled, shapes=job.plan.shapes,
                            todo=self._missing(job), **self.options)
        ref = self.task.options(label_selector={f"{host.LABEL}class": job.machine},
                                resources={cluster.SLOT: 1}).remote(spec, payload)
        self.running[ref] = job
        self.bar.show(f"{job.plan.name} on {job.machine}: queued (attempt {job.attempts})")

    def _on_start(self, job: _Job, message: dict[str, Any]) -> None:
        node_id = message["node_id"]
        if node_id not in self.names:
            self.names.update({n.id: n.name for n in cluster.live_nodes(self.ray)[0]})
        job.node = self.names.get(node_id, node_id[:12])
        entry = self.section["nodes"].setdefault(job.node, {"calibration": {"samples_ms": []}})
        entry.update(id=node_id, machine=job.machine, environment=message["environment"])
        self.section["classes"][job.machine].setdefault("nodes", [])
        if job.node not in self.section["classes"][job.machine]["nodes"]:
            self.section["classes"][job.machine]["nodes"].append(job.node)
        self.bar.show(f"{job.plan.name} on {job.machine}: started on {job.node}")

    def _on_compiled(self, job: _Job, message: dict[str, Any]) -> None:
        directory = self.path.parent / job.machine / job.plan.name
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{job.plan.name}-", dir=directory.parent))
        jobs.unpack(message["tar"], staging)
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
        job.compiled = directory
        relative = str(directory.relative_to(self.path.parent))
        record = message["record"]
        self.section["classes"][job.machine]["models"][job.plan.name] = {"dir": relative, "backends": record["backends"]}
        if job.plan.name not in self.report["models"]:
            sweep.add_model(self.report, job.plan.name, dict(record, source=str(job.plan.source.path), dir=relative))
            self.report["models"] = {p.plan.name: self.report["models"][p.plan.name] for p in self.jobs
                                     if p.plan.name in self.report["models"]}  # in the sweep's order
        sweep.save(self.path, self.report)

    def _on_rows(self, job: _Job, message: dict[str, Any]) -> None:
        have = {schema.row_key(r) for r in self.report["rows"]}
        rows = [schema.Row.model_validate(dict(r, node=job.node, machine=job.machine)) for r in message["rows"]]
        fresh = [r.to_json() for r in rows if r.key not in have]
        self.report["rows"] += fresh
        self.report["rows"].sort(key=sweep.row_order(self.report))
        sweep.add_calibration(self.section["nodes"][job.node]["calibration"], message["calibration"])
        sweep.save(self.path, self.report)
        job.rows += len(fresh)
        now = time.monotonic()
        self.bar.measured(len(fresh), now - job.heard)
        job.heard = now
        self.bar.show(f"{job.plan.name} on {job.machine} ({job.node})")

    def _lost(self, job: _Job, err: BaseException) -> None:
        where = f"node {job.node}" if job.node else "its node"
        self._log(job, f"lost: {_reason(err)}")
        missing = self._rows_missing(job)
        said = f"{job.plan.name} on {job.machine}: {where} lost ({_reason(err)}), {job.rows - job.rows_before} rows kept"
        if not missing:
            self.bar.note(said)
            return
        live = {n.machine.name for n in cluster.live_nodes(self.ray)[0]}
        if job.machine not in live:
            self.bar.note(f"{said}; no node of class {job.machine} is left: {missing} rows failed")
            self._fail(job, f"{where} was lost ({_reason(err)}) and no node of class {job.machine} is left")
        elif job.rows == job.rows_before and job.attempts >= MAX_IDLE_ATTEMPTS:
            self.bar.note(f"{said}; lost {job.attempts} times without a row: {missing} rows failed")
            self._fail(job, f"the bench job was lost {job.attempts} times without finishing a row "
                            f"(last: {_reason(err)})")
        else:
            self.bar.note(f"{said}; the {missing} missing rerun on another node of the class")
            self._submit(job)

    def _abandon_orphans(self) -> None:
        """Jobs waiting for a class that has no live node left: cancelled, their rows failed."""
        live = {n.machine.name for n in cluster.live_nodes(self.ray)[0]}
        for ref, job in list(self.running.items()):
            if job.machine not in live:
                self.ray.cancel(ref, force=True)
                del self.running[ref]
                self._log(job, "abandoned: no node of its class is left")
                self._fail(job, f"{f'node {job.node}' if job.node else 'its node'} was lost and no node of class "
                                f"{job.machine} is left")

    def _fail(self, job: _Job, reason: str) -> None:
        """Every row the job still owes, `failed` with the reason."""
        rows = [schema.Row(model=job.plan.name, backend=name, batch_size=b, seq_len=s, status="failed", reason=reason,
                           mode=self.mode, machine=job.machine).to_json()
                for (b, s), names in self._missing(job).items() for name in names]
        self.report["rows"] += rows
        self.report["rows"].sort(key=sweep.row_order(self.report))
        sweep.save(self.path, self.report)
        self.bar.measured(len(rows), 0.0)

    def _log(self, job: _Job, outcome: str) -> None:
        self.section["jobs"].append({"model": job.plan.name, "machine": job.machine, "attempt": job.attempts,
                                     "node": job.node, "rows": job.rows - job.rows_before,
                                     "seconds": round(time.monotonic() - job.submitted, 1), "outcome": outcome})
        sweep.save(self.path, self.report)


def _reason(err: BaseException) -> str:
    """The line that says why: a job's own exception's last line, Ray's first line otherwise."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip()
        return f"{type(cause).__name__}: {text.splitlines()[-1]}" if text else type(cause).__name__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(err).__name__
