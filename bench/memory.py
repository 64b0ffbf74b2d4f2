"""Streaming and generation speed (issue 12): per-chunk latency of stateful models, the floor of
each runtime, and ms per generated step of TVM's fused loop against ONNX Runtime's `Loop`.

1. Streaming, batch 1, one step per chunk (the deployed case): for each cell and hidden size a
   spec with `rnn.state: true` (40 features per step, as a speech front end gives), benched with
   `rnn.bench --stream` (every backend interleaved in the same rounds, the state carried from
   call to call through the runner API). The floor: the same inputs and outputs through an empty
   model (every output an Identity of its input) on each runtime, through the same API, streamed
   the same way: what a call costs that computes nothing.
2. Generation: a character-level generator (tokens 96, embedding 32, LSTM 256, 64 steps), at
   batch 1 and 16: TVM's fused in-artifact loop against the same model with its ONNX `Loop`
   lowered as a recursive Relax function (`generation: loop`), ONNX Runtime's `Loop` and torch,
   all in one A/B run (`--against`), so that every row is measured in the same rounds.

    python bench/memory.py --out build/memory
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import yaml
from onnx import TensorProto, helper

from rnnc import api
from rnnc.bench import run_bench

FEATURES = 40
GENERATOR = {"name": "char-gen", "input": {"type": "tokens", "vocab_size": 96, "embedding_dim": 32},
             "rnn": {"cell": "lstm", "hidden_size": 256},
             "output": {"mode": "one_to_many", "steps": 64, "dense": {"units": 96, "activation": "softmax"}}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/memory")
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--hidden", default="128,256,512")
    p.add_argument("--threads", type=int, default=None, help="threads per runtime (default: every core)")
    p.add_argument("--skip", default="", help="stream,generation: parts not to run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = {} if args.threads is None else {"threads": args.threads}
    lines = []
    if "stream" not in args.skip:
        lines += streaming(out, args.cells.split(","), [int(h) for h in args.hidden.split(",")], threads)
    if "generation" not in args.skip:
        lines += generation(out, threads)
    text = "\n".join(lines) + "\n"
    (out / "memory.md").write_text(text)
    print(text)
    return 0


def streaming(out: Path, cells: list[str], hiddens: list[int], threads: dict[str, Any]) -> list[str]:
    lines = ["## Streaming, batch 1, one step per chunk (us per chunk: median [p99])", "",
             "| cell | hidden | backend | median | p99 | floor (empty model) | above the floor | vs onnxruntime |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        for hidden in hiddens:
            name = f"stream-{cell}{hidden}"
            spec = {"name": name, "input": {"type": "features", "features": FEATURES},
                    "rnn": {"cell": cell, "hidden_size": hidden, "state": True},
                    "shapes": {"batch_sizes": [1], "seq_lens": [1]}}
            model_dir = _compiled(out, name, spec, ["torch", "torchscript", "onnxruntime", "tvm"], threads)
            rows = _stream_rows(model_dir, out / f"bench-{name}", threads)
            floors = _floors(out, cell, hidden, threads)
            ort = rows.get("onnxruntime", {}).get("median_ms")
            for backend, row in rows.items():
                if "median_ms" not in row:
                    lines.append(f"| {cell} | {hidden} | {backend} | {row.get('status')}: {row.get('reason')} |||||")
                    continue
                floor = floors.get(backend if backend != "torch" else "torchscript")
                ratio = f"{row['median_ms'] / ort:.2f}x" if ort else "-"
                lines.append(
                    f"| {cell} | {hidden} | {backend} | {_us(row['median_ms'])} | {_us(row['p99_ms'])} | "
                    f"{_us(floor) if floor else '-'}{' (scripted)' if backend == 'torch' and floor else ''} | "
                    f"{_us(row['median_ms'] - floor) if floor else '-'} | {ratio} |")
    return lines + [""]


def _stream_rows(model_dir: Path, bench_out: Path, threads: dict[str, Any]) -> dict[str, dict[str, Any]]:
    report = run_bench(model_dir, "cpu", ["torch", "torchscript", "onnxruntime", "tvm"], seq_lens=[1],
                       batch_sizes=[1], out_dir=bench_out, stream=True, **threads)
    return {r["backend"]: r for r in report["rows"]}


def _floors(out: Path, cell: str, hidden: int, threads: dict[str, Any]) -> dict[str, float]:
    """Each runtime's empty call: a model whose outputs are its inputs (features, h0[, c0]) as
    Identity nodes (ONNX for ONNX Runtime and TVM) or a scripted `return [x, h0, c0]` (TorchScript),
    streamed the same way as the real model."""
    names = ["h0", "c0"] if cell == "lstm" else ["h0"]
    folder = out / f"floor-{cell}{hidden}"
    folder.mkdir(parents=True, exist_ok=True)
    onnx_file = folder / "empty.onnx"
    ins = [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 1, FEATURES])]  # batch 1, one step
    ins += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, hidden]) for n in names]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims)
            for n, dims in [("output", [1, 1, FEATURES])] + [(f"{n[0]}_n", [1, 1, hidden]) for n in names]]
    nodes = [helper.make_node("Identity", [i.name], [o.name]) for i, o in zip(ins, outs)]
    graph = helper.make_graph(nodes, "empty", ins, outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), onnx_file)
    script_file = folder / "empty.ts"
    torch.jit.save(torch.jit.script(_EmptyLSTM() if cell == "lstm" else _Empty()), str(script_file))
    floors = {}
    for source, backends in ((onnx_file, ["onnxruntime", "tvm"]), (script_file, ["torchscript"])):
        shapes = {"features": (1, 1, FEATURES), **{n: (1, 1, hidden) for n in names}}
        model_dir = folder / f"{source.stem}-{source.suffix[1:]}"
        scripted = source.suffix == ".ts"  # its outputs are output_0, output_1, ...: the pairs are given
        state = {n: f"output_{i + 1}" if scripted else f"{n[0]}_n" for i, n in enumerate(names)}
        api.compile(source, "cpu", backends, out=model_dir, shapes=shapes if scripted else None, state=state,
                    **threads)
        report = run_bench(model_dir, "cpu", backends, seq_lens=[1], batch_sizes=[1],
                           out_dir=folder / f"bench-{source.suffix[1:]}", stream=True, **threads)
        floors.update({r["backend"]: r["median_ms"] for r in report["rows"] if "median_ms" in r})
    return floors


class _Empty(torch.nn.Module):
    def forward(self, features: torch.Tensor, h0: torch.Tensor) -> list[torch.Tensor]:
        return [features, h0]


class _EmptyLSTM(torch.nn.Module):
    def forward(self, features: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> list[torch.Tensor]:
        return [features, h0, c0]


def generation(out: Path, threads: dict[str, Any]) -> list[str]:
    spec = {**GENERATOR, "shapes": {"batch_sizes": [1, 16]}}
    fused = _compiled(out, "char-gen-fused", spec, ["torch", "onnxruntime", "tvm"], threads)
    loop = _compiled(out, "char-gen-loop", spec, ["tvm"], threads, options={"generation": "loop"})
    report = run_bench(fused, "cpu", ["torch", "onnxruntime", "tvm"], out_dir=out / "bench-generation",
                       against=loop, **threads)
    old = json.loads((out / "bench-generation" / "against" / "report.json").read_text())
    rows = [r for r in report["rows"] if "median_ms" in r]
    rows += [{**r, "backend": f"{r['backend']} (Loop as Relax recursion)"} for r in old["rows"]
             if "median_ms" in r and r["backend"] == "tvm"]
    lines = ["## Generation: char-level LSTM 256, 64 steps (ms per generated step: median [p99 / steps])", "",
             "| batch | backend | ms per step | p99 per step | steps/s | first step (ms) | speed vs onnxruntime's Loop |",
             "|---|---|---|---|---|---|---|"]
    for batch in (1, 16):
        at = [r for r in rows if r["batch_size"] == batch]
        ort = next((r["ms_per_step"] for r in at if r["backend"] == "onnxruntime"), None)
        for r in sorted(at, key=lambda r: r["ms_per_step"]):
            ratio = f"{ort / r['ms_per_step']:.2f}x" if ort else "-"
            first = f"{r['first_step_ms']:.4f}" if r.get("first_step_ms") else "-"
            lines.append(f"| {batch} | {r['backend']} | {r['ms_per_step']:.4f} | {r['p99_ms'] / r['steps']:.4f} | "
                         f"{r['steps_per_s']:.0f} | {first} | {ratio} |")
    return lines + [""]


def _compiled(out: Path, name: str, spec: dict[str, Any], backends: list[str], threads: dict[str, Any],
              options: dict[str, Any] | None = None) -> Path:
    """Compile `spec` into OUT/name (the model keeps the spec's own name when it has one: an A/B
    bench matches the two builds by it)."""
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **spec}))
    model_dir = out / name
    manifest, _ = api.compile(path, "cpu", backends, out=model_dir, options=options, **threads)
    bad = {k: b.reason for k, b in manifest.backends.items() if b.status != "ok"}
    if bad:
        print(f"{name}: not ok: {bad}", file=sys.stderr)
    return model_dir


def _us(ms: float) -> str:
    return f"{1000 * ms:.1f}"


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
