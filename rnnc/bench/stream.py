"""`rnnc bench --stream` and the rows of generative models (SPEC section 2, "Streaming and generation").

A stream row times what a streaming user does: each call is one chunk of `seq_len` steps, run
through the runner's public API (`runner.bind(**chunk, **state)()`, what `runner(**arrays)` is)
on a fresh chunk and the state outputs of the call before, carried through numpy. Every backend
keeps its own `Stream`, so its state goes on across warm-up, settling and every sample of the
interleaved rounds (`measure.measure_interleaved`): nothing is reset between samples, and a
timed sample of several loops is several chunks of one stream.

The floor beside it, `bind_ms`, is `runner.bind(**arrays)` alone on the same inputs: checking the
inputs and making them resident in the runtime, the part of a call that does not depend on the
model's work. It is the floor the runner API itself puts under every chunk, not the runtime's
empty-call dispatch cost, which needs each backend's help (a later `targets` change).

Generative models (`one_to_many`, `encoder_decoder`) generate `generation_steps(model)` steps per
call, so their rows also say `ms_per_step` and `steps_per_s`. `first_step_ms`, the latency to the
first generated step, is filled by the backend: only a runner that can run a one-step generation
through the same artifact, exposed as `runner.bind_first_step(**arrays) -> call`, has it timed
(in the same rounds); for any other the key is left out rather than estimated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from rnnc.bench import measure
from rnnc.errors import UserError
from rnnc.graphs.model import Model

Arrays = dict[str, np.ndarray]
POOL = 8  # distinct fresh chunks a stream cycles through: fresh data without timing a generator
BIND = " (bind)"  # the floor's name in the interleaved rounds, after the backend's
FIRST_STEP = " (first step)"


@dataclass(frozen=True)
class Options:
    """How `run_bench` streams: `chunk_ms` is the real time one chunk stands for (None: no rtf)."""

    chunk_ms: float | None = None


def check_options(stream: bool, chunk_ms: float | None) -> Options | None:
    """The stream options of a bench, or None for a plain one; bad flags are a `UserError`."""
    if chunk_ms is not None and not stream:
        raise UserError("--chunk-ms: only with --stream (it is the real time one streamed chunk stands for)")
    if chunk_ms is not None and not (isinstance(chunk_ms, (int, float)) and math.isfinite(chunk_ms)
                                     and chunk_ms > 0):
        raise UserError(f"--chunk-ms: must be a number of milliseconds > 0, got {chunk_ms}")
    return Options(float(chunk_ms) if chunk_ms is not None else None) if stream else None


def require_state(model: Model, source: Any) -> None:
    """Refuse, before any compile, to stream a model that has no state to carry."""
    if not model.state:
        raise UserError(f"--stream: model {model.name!r} from {source} has no state pairs to carry between "
                        f"chunks (declare them with --state IN=OUT, or rnn.state: true in a spec)")


def check_chunk_lengths(options: Options | None, seqs: set[int]) -> None:
    """One --chunk-ms is the real time of one chunk length: several lengths would give all but
    one of them a wrong real-time factor."""
    if options is not None and options.chunk_ms is not None and len(seqs) > 1:
        raise UserError(f"--chunk-ms: the real time of one chunk fits one chunk length, but the sweep has "
                        f"{', '.join(map(str, sorted(seqs)))}: give one --seq-lens value")


def generation_steps(model: Model) -> int | None:
    """Steps a generative model produces per call: one_to_many's `output.steps`, encoder_decoder's
    `decoder.max_steps`; None for any other model. Read from the ModelSpec, else from the
    normalised spec a compiled DIR records, and guarded, so that it holds whichever fields exist."""
    spec = model.spec if model.spec is not None else (model.source or {}).get("spec")
    output = _field(spec, "output")
    mode = _field(output, "mode")
    if mode == "one_to_many":
        steps = _field(output, "steps")
    elif mode == "encoder_decoder":
        steps = _field(_field(spec, "decoder"), "max_steps")
    else:
        return None
    return int(steps) if isinstance(steps, (int, np.integer)) and steps >= 1 else None


def _field(obj: Any, key: str) -> Any:
    """A field of a pydantic spec or of its JSON form; None where either is absent."""
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def chunks(model: Model, batch: int, seq: int, seed: int, count: int = POOL) -> list[Arrays]:
    """`count` fresh chunks (every input but the state ones), seeded by the row's shape."""
    rng = np.random.default_rng([seed, batch, seq, 1])
    return [{k: v for k, v in model.random_inputs(batch, seq, rng).items() if k not in model.state}
            for _ in range(count)]


def zero_state(model: Model, batch: int, seq: int) -> Arrays:
    """Where a stream starts (and restarts): every state input zero, of its shape and dtype."""
    return {t.name: np.zeros(t.shape(batch, seq), dtype=t.dtype) for t in model.inputs if t.name in model.state}


class Stream:
    """One backend's stream: call it for the next chunk. `state` is what the next call gets,
    `calls` the chunks run so far (chunk k is `chunks[k % len(chunks)]`), `resets` the times the
    state was found non-finite and restarted at `start`."""

    def __init__(self, runner: Any, chunks: list[Arrays], pairs: dict[str, str], start: Arrays) -> None:
        self.runner, self.chunks, self.pairs, self.start = runner, chunks, dict(pairs), start
        self.dtypes = {k: v.dtype for k, v in start.items()}
        self.state = dict(start)
        self.calls = 0
        self.resets = 0

    def __call__(self) -> Arrays:
        chunk = self.chunks[self.calls % len(self.chunks)]
        out = self.runner.bind(**chunk, **self.state)()
        self.state = {k: np.asarray(out[o], dtype=self.dtypes[k]) for k, o in self.pairs.items()}
        self.calls += 1
        return out

    def keep_finite(self) -> None:
        """Restart from `start` if the carried state is no longer finite (a model whose state grows
        without bound would otherwise time NaN arithmetic)."""
        if not all(np.isfinite(v).all() for v in self.state.values() if v.dtype.kind in "fc"):
            self.state = dict(self.start)
            self.resets += 1

    def timer(self, call: Callable[[], object] | None = None) -> measure.TimeFunc:
        """A TimeFunc of `loops` chunks (through `call`, default the stream itself: the bench
        passes it wrapped by `measure.with_extra_work`), the state checked before the clock starts."""
        timed = measure.time_calls(call or self)

        def time_func(loops: int) -> float:
            self.keep_finite()
            return timed(loops)

        return time_func


def first_step_call(runner: Any, inputs: Arrays) -> Callable[[], object] | None:
    """The backend's one-step generation on these inputs, where its runner offers one."""
    bind = getattr(runner, "bind_first_step", None)
    return bind(**inputs) if callable(bind) else None


def row_fields(median_ms: float, warning: str | None, options: Options | None, stream: Stream | None,
               steps: int | None, bind_ms: float | None, first_step_ms: float | None) -> dict[str, Any]:
    """The keys a timed row adds to the usual ones: a stream row's (with `options`, from its
    `stream`), a generative model's (with `steps`); empty for a plain row of any other model."""
    fields: dict[str, Any] = {}
    if options is not None and stream is not None:
        fields.update(mode="stream", chunks_per_s=round(1000.0 / median_ms, 3), chunk_calls=stream.calls,
                      state_resets=stream.resets or None, bind_ms=None if bind_ms is None else round(bind_ms, 6))
        if options.chunk_ms is not None:
            fields.update(chunk_ms=options.chunk_ms, rtf=float(f"{median_ms / options.chunk_ms:.6g}"))
        if stream.resets:
            fields["warning"] = "; ".join(filter(None, [warning, f"the state went non-finite and restarted at "
                                                                 f"zeros {stream.resets} times"]))
    if steps is not None:  # per step at the median, per sequence of the batch
        fields.update(steps=steps, ms_per_step=round(median_ms / steps, 6),
                      steps_per_s=round(1000.0 * steps / median_ms, 3),
                      first_step_ms=None if first_step_ms is None else round(first_step_ms, 6))
    return fields

