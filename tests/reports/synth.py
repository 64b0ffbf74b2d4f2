"""Synthetic reports for the renderer and the gate: rows with lognormal samples, seeded."""
from __future__ import annotations

from typing import Any

import numpy as np

from rnnc import stats
from rnnc.records import report as schema

SPEC = {"name": "m", "input": {"type": "features", "features": 4}, "rnn": {"cell": "lstm", "hidden_size": 8},
        "output": {"mode": "many_to_many"}, "dtype": "float32"}


def row(backend: str, batch: int, seq: int, center_ms: float, n: int = 40, spread: float = 0.03,
        seed: int = 0, model: str = "m") -> dict[str, Any]:
    rng = np.random.default_rng([seed, batch, seq, len(backend)])
    samples = [float(v) for v in center_ms * np.exp(rng.normal(0, spread, n))]
    s = stats.summarize(samples)
    return {"model": model, "backend": backend, "batch_size": batch, "seq_len": seq, "status": "ok",
            "samples_ms": samples, **s, **stats.throughput(s["median_ms"], batch, seq), "loops": 1,
            "warning": None, "check": None}


def report(rows: list[dict[str, Any]], fingerprint: str = "abc", calibration_ms: float = 5.0,
           target: str = "cpu") -> dict[str, Any]:
    r = schema.new_report(target, {"cpu": {"model": "test cpu", "cores": 2}}, {"min_count": 40})
    r["finished"] = True
    r["calibration"] = {"workload": "matmul", "samples_ms": [calibration_ms] * 20}
    for name in dict.fromkeys(x["model"] for x in rows):
        r["models"][name] = {"fingerprint": fingerprint, "spec": SPEC, "backends": {
            "torch": {"status": "ok", "build_time_s": 0.01, "artifact_bytes": 2048, "rel_err": 1e-7}}}
    r["rows"] = rows
    return r


def standard(scale: dict[str, float] | None = None, seed: int = 0, **kw: Any) -> dict[str, Any]:
    """torch and onnxruntime at batch 1 and 4, seq 8 and 32; `scale` slows a backend down."""
    scale = scale or {}
    rows = [row(b, batch, seq, base * seq / 8 * batch ** 0.5 * scale.get(b, 1.0), seed=seed)
            for b, base in (("torch", 1.0), ("onnxruntime", 0.4)) for batch in (1, 4) for seq in (8, 32)]
    return report(rows, **kw)


def stream_row(backend: str, batch: int, chunk: int, center_ms: float, chunk_ms: float | None = None,
               **kw: Any) -> dict[str, Any]:
    """A `--stream` row: per-chunk times, chunks/s, the bind floor, and the rtf with `chunk_ms`."""
    r = row(backend, batch, chunk, center_ms, **kw)
    r.update(mode="stream", chunks_per_s=1000 / r["median_ms"], bind_ms=center_ms / 10, chunk_calls=200)
    if chunk_ms is not None:
        r.update(chunk_ms=chunk_ms, rtf=r["median_ms"] / chunk_ms)
    return r


def generation(r: dict[str, Any], steps: int, first_step_ms: float | None = None) -> dict[str, Any]:
    """The row of a generative model: `steps` generated per call."""
    r = dict(r, steps=steps, ms_per_step=r["median_ms"] / steps, steps_per_s=1000 * steps / r["median_ms"])
    return r if first_step_ms is None else dict(r, first_step_ms=first_step_ms)


def streamed(scale: dict[str, float] | None = None, seed: int = 0, chunk_ms: float | None = 10.0) -> dict[str, Any]:
    """torch, onnxruntime and tvm streamed in chunks of 4 and 16 at batch 1 and 2."""
    scale = scale or {}
    rows = [stream_row(b, batch, chunk, base * chunk / 4 * batch ** 0.5 * scale.get(b, 1.0),
                       chunk_ms if chunk == 4 else None, seed=seed)
            for b, base in (("torch", 1.0), ("onnxruntime", 0.4), ("tvm", 0.3)) for batch in (1, 2)
            for chunk in (4, 16)]
    r = report(rows)
    r["settings"]["stream"] = True
    return r
