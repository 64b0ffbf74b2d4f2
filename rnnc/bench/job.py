"""What a fleet node runs (`rnnc bench --cluster`): one bench job, a model on this node's class.

The job gets the model as bytes: a source (a spec or a model file) to compile here, where the
ISA is the class's own, or a compiled DIR (a rerun after a node was lost, or `--resume`), packed
as a tar. It then measures the rows it was asked for with the one-machine sweep's own loop
(`sweep.shape_rows`: every backend interleaved on the same inputs, shape by shape) and yields
each shape's rows as soon as they are done: the job is a Ray streaming generator whose caller,
the driver, owns what it yields, and it goes on only once the driver has taken the message
(backpressure of one), so that a node lost later has lost no finished row. The compiled DIR goes
back the same way, right after the compile, so that a rerun elsewhere need not compile again.
No actor relays the messages: every Ray worker wakes a hundred times a second, and on a node
that benches, each wakeup is a timed call preempted.

The job runs as a one-machine bench would: Ray sets OMP_NUM_THREADS=1 in a worker for a task that
takes no CPUs, and the job removes it, so that a library rnnc does not size explicitly sees the
node's cores as it would outside Ray; and Ray starts workers at nice 15, which the job undoes
where the node allows (else the report's node environment records the `niceness`).
"""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rnnc import host
from rnnc.bench import measure, sweep
from rnnc.bench import stream as streaming
from rnnc.bench import threads as runtime_threads
from rnnc.bench.progress import SweepProgress
from rnnc.bench.sources import Source, file_source, open_source
from rnnc.progress import SILENT


@dataclass(frozen=True)
class JobSpec:
    """One job: which rows of which model, measured how (the bench's own flags)."""

    job: int
    attempt: int
    model: str
    machine: str  # the class it was placed on (`MachineClass.name`)
    source_name: str  # the file name of the source shipped as the payload
    compiled: bool  # the payload is a compiled DIR (a tar), not a source to compile
    target: str
    backends: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]  # every shape of the model's sweep: what a compile builds
    todo: dict[tuple[int, int], list[str]]  # the backends each shape still needs
    settings: measure.Settings
    check: bool = False
    seed: int = 0
    threads: int | str | None = "all"  # "all": every core of the node that runs it
    imports: dict[str, Any] = field(default_factory=dict)  # a model file's --shapes, --bind, --state
    streamed: streaming.Options | None = None
    extra_work: dict[str, float] = field(default_factory=dict)  # TEST-ONLY, as `run_bench`'s


def run_job(spec: JobSpec, payload: bytes) -> Iterator[dict[str, Any]]:
    """Run one job on this node, yielding its messages: `start` (the node's id and environment),
    `compiled` (the DIR as a tar and the report's record of the model), `rows` (one shape's rows
    and the calibration samples taken)."""
    import ray

    def message(kind: str, **fields: Any) -> dict[str, Any]:
        return dict(fields, kind=kind, job=spec.job, attempt=spec.attempt)

    if os.environ.get("OMP_NUM_THREADS") == "1":  # Ray's for a task of no CPUs: not what a bench here would see
        del os.environ["OMP_NUM_THREADS"]
    niceness = _unniced()
    threads = host.cpu_count() if spec.threads == "all" else spec.threads
    with tempfile.TemporaryDirectory(prefix="rnnc-job-") as tmp, runtime_threads.kept_torch_threads():
        work = Path(tmp)
        local = sweep.start_report(work / sweep.REPORT, False, spec.target, spec.settings, spec.check,
                                   spec.extra_work, threads, runtime_threads.in_force(threads), spec.streamed)
        if niceness:  # every other process on the node preempts this bench: the report says so
            local["environment"]["niceness"] = niceness
        yield message("start", node_id=ray.get_runtime_context().get_node_id(), environment=local["environment"])
        model, manifest, model_dir = _open(spec, payload, work, threads)
        if not spec.compiled:
            yield message("compiled", tar=pack(model_dir), record=sweep.model_record(model, manifest))
        sent = 0
        bar = SweepProgress(SILENT, 0)
        for done in sweep.shape_rows(local, work, model, manifest, model_dir, spec.target, list(spec.backends),
                                     spec.todo, spec.settings, spec.check, spec.extra_work, spec.seed, bar, threads,
                                     None, spec.streamed):
            samples = local["calibration"]["samples_ms"]
            yield message("rows", rows=[r.to_json() for r in done.rows], calibration=samples[sent:])
            sent = len(samples)


def _unniced() -> int:
    """This worker's niceness, brought back to 0 where it can be: Ray starts workers at nice 15
    (unless the node was started with `RAY_worker_niceness=0`, as `rnnc node` does), where every
    daemon's wakeup preempts a timed call. Threads started from here on (the runtimes' pools)
    inherit it. Returns what is left: 0, or the niceness the node does not let a worker leave."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness <= 0:
        return 0
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except PermissionError:
        return niceness
    return 0


def _open(spec: JobSpec, payload: bytes, work: Path, threads: int | None) -> tuple[Any, Any, Path]:
    """The model, manifest and DIR of the payload: a DIR unpacked, or a source compiled here."""
    streamed = spec.streamed is not None
    if spec.compiled:
        unpack(payload, work / "dir")
        src = Source(work / "dir", True, list(spec.shapes))
    else:
        path = work / "source" / spec.source_name
        path.parent.mkdir()
        path.write_bytes(payload)
        src = file_source(path)
    return open_source(src, list(spec.shapes), spec.target, list(spec.backends), work / "dir", False, False, SILENT,
                       spec.imports, threads, streamed)


def pack(directory: Path) -> bytes:
    """A DIR as an uncompressed tar (its artifacts are weights: compressing them gains little)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


def unpack(data: bytes, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(directory, filter="data")


def remote(ray: Any) -> Callable[..., Any]:
    """The job as a Ray task: a streaming generator that yields a message only once the driver
    has taken the one before. A job takes no CPU of Ray's (its node's bench slot is what keeps two
    benches off the same cores), is never retried by Ray (the driver reruns only the rows still
    missing) and runs in a fresh worker process each time, as a one-machine bench does."""
    return ray.remote(num_cpus=0, max_retries=0, max_calls=1, num_returns="streaming",
                      _generator_backpressure_num_objects=1)(run_job)
