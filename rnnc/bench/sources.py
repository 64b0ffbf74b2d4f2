"""What `rnnc bench` runs on: a spec, a model file, a compiled DIR or a folder of specs, each
resolved to a model, its manifest and its compiled DIR (compiling it when needed)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rnnc import pipeline
from rnnc.bench.stream import require_state
from rnnc.errors import UserError
from rnnc.graphs import load_model, load_spec
from rnnc.graphs.model import Model
from rnnc.progress import Progress
from rnnc.records.manifest import MANIFEST, Manifest, read_manifest

SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Source:
    """One model to bench: a compiled DIR or a file to compile, and its default shapes."""

    path: Path
    compiled: bool
    shapes: list[tuple[int, int]] | None  # None: known only once the model is loaded
    fixed_seq: int | None = None  # one_to_many: one step in, `steps` out: its rows' seq_len is the steps


def resolve_sources(path: Path) -> list[Source]:
    """A compiled DIR, a spec or model file, or a folder of specs (every *.yaml, sorted)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / MANIFEST).is_file():
            manifest = read_manifest(path)
            return [Source(path, True, [tuple(s) for s in manifest.shapes], one_step_steps(manifest.spec))]
        specs = sorted(p for p in path.iterdir() if p.suffix.lower() in SPEC_SUFFIXES and p.is_file())
        if not specs:
            raise UserError(f"{path}: neither a compiled DIR (no manifest.json) nor a folder of specs (no *.yaml)")
        return [file_source(p) for p in specs]
    return [file_source(path)]


def sweep_shapes(
    defaults: Sequence[tuple[int, int]] | None, seq_lens: list[int] | None, batch_sizes: list[int] | None,
    fixed_seq: int | None = None,
) -> list[tuple[int, int]] | None:
    """(batch, seq) pairs: the model's defaults, with either axis replaced by its flag; a one_to_many
    model's seq is its `fixed_seq` (the steps it generates) whatever --seq-lens says."""
    if fixed_seq is not None:
        seq_lens = [fixed_seq]
    if defaults is None and (seq_lens is None or batch_sizes is None):
        return None
    defaults = list(defaults or [])
    batches = batch_sizes or sorted({b for b, _ in defaults})
    seqs = seq_lens or sorted({s for _, s in defaults})
    if seq_lens is None and batch_sizes is None:
        return sorted(dict.fromkeys(defaults))
    return [(b, s) for b in batches for s in seqs]


def fingerprint(model: Model) -> str:
    """What makes two reports comparable: the spec without its default shapes, or the graph."""
    if model.source.get("kind") == "spec":
        return spec_fingerprint(model.source["spec"])
    if model.onnx is not None:
        data = model.onnx.SerializeToString(deterministic=True)
    else:  # a TorchScript model with no ONNX graph: the file and what was bound
        file = model.origin.read_bytes() if model.origin is not None else b""
        data = file + json.dumps(model.source.get("bind"), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def spec_fingerprint(spec: dict[str, Any]) -> str:
    """A spec model's fingerprint from its normalised spec alone, without building the model."""
    data = json.dumps({k: v for k, v in spec.items() if k != "shapes"}, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def file_source(path: Path) -> Source:
    if path.suffix.lower() in SPEC_SUFFIXES:
        spec = load_spec(path)  # a bad spec is refused here, before any work
        steps = one_step_steps(spec.normalised())
        seqs = [steps] if steps else spec.shapes.seq_lens
        return Source(path, False, [(b, s) for b in spec.shapes.batch_sizes for s in seqs], steps)
    return Source(path, False, None)


def one_step_steps(spec: dict[str, Any] | None) -> int | None:
    """The steps of a one_to_many spec (its input is one step, so --seq-lens does not apply to it)."""
    output = (spec or {}).get("output") or {}
    return output.get("steps") if output.get("mode") == "one_to_many" else None


def default_out(source: Path, sources: list[Source], target: str) -> Path:
    if len(sources) == 1 and sources[0].compiled:
        return sources[0].path
    if source.is_dir():
        return Path("build") / f"{source.resolve().name}-{target}"
    if source.suffix.lower() in SPEC_SUFFIXES:
        return Path("build") / f"{load_spec(source).name}-{target}"
    return Path("build") / f"{source.stem}-{target}"


def open_source(src: Source, shapes: list[tuple[int, int]] | None, target: str, backends: list[str],
                out_dir: Path, many: bool, resume: bool, progress: Progress,
                imports: dict[str, Any] | None = None,
                threads: int | None = None, need_state: bool = False,
                announce: Callable[[], None] = lambda: None) -> tuple[Model, Manifest, Path]:
    """The model, its manifest and its compiled DIR: opened when given, else compiled (or, under
    --resume, reused from a previous run into the same --out when the spec is unchanged).
    `need_state` (`--stream`) refuses a model without state pairs before any compile; `announce`
    is called just before a compile starts (the sweep's progress line), so that a refusal stays
    the one line printed."""
    if src.compiled:
        manifest, model = pipeline.open_dir(src.path)
        pipeline.check_target(src.path, manifest, target)
        if need_state:
            require_state(model, src.path)
        return model, manifest, src.path
    model = load_model(src.path, **(imports or {}))
    if need_state:
        require_state(model, src.path)
    if shapes is not None:
        model.shapes = list(shapes)  # build (TVM: one library per shape) and verify what is benched
    model_dir = out_dir / model.name if many else out_dir
    if resume and (model_dir / MANIFEST).is_file():
        manifest, old = pipeline.open_dir(model_dir)
        built = {tuple(x) for x in manifest.shapes}
        if manifest.target == target and fingerprint(old) == fingerprint(model) \
                and all(b in manifest.backends for b in backends) and built >= set(model.shapes):
            return old, manifest, model_dir
    announce()
    manifest = pipeline.compile_model(model, target, backends, model_dir, progress, None, threads)
    return model, manifest, model_dir


def first_step_twin(model: Model, target: str, backends: list[str], twin_dir: Path, threads: int | None,
                    announce: Callable[[], None]) -> Manifest:
    """A generative spec's latency to its first step comes from its twin: the same spec generating
    one step (an encoder-decoder: the encoder and one decoder step), compiled once into `twin_dir`
    (reused while its spec and backends are unchanged), whose runners the sweep times in the same
    rounds as the rows (`stream.first_step_call`). A backend whose twin does not build has none."""
    from rnnc.graphs.from_spec import model_from_spec

    spec = model.spec
    if spec.mode == "one_to_many":
        one = spec.model_copy(update={"output": spec.output.model_copy(update={"steps": 1})})
    else:
        one = spec.model_copy(update={"decoder": spec.decoder.model_copy(update={"max_steps": 1})})
    twin = model_from_spec(one)
    twin.shapes = twin.shapes[:1]
    if (twin_dir / MANIFEST).is_file():
        manifest, built = pipeline.open_dir(twin_dir)
        if fingerprint(built) == fingerprint(twin) and all(n in manifest.backends for n in backends):
            return manifest
    announce()
    return pipeline.compile_model(twin, target, backends, twin_dir, threads=threads)
