"""Every precision a CPU user has, side by side (issue 13): ONNX Runtime fp32 and int8
(quantize_dynamic), OpenVINO fp32 and bf16 (INFERENCE_PRECISION_HINT), TVM fp32, bf16 and int8.

One `rnnc bench` per model: every backend of a shape is timed in the same interleaved rounds, so
the ratios are measured side by side. Each table gives the median ms with its IQR, the ratios the
issue's acceptance names, and each backend's worst normwise error against float64 from the
compile's verification. Then the int8 error of a 1,000-call stream (`verify --chain 1000`).

    python bench/precision.py --out build/precision
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from rnnc import api

SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "suite"
BACKENDS = ["onnxruntime", "onnxruntime:int8", "openvino", "openvino:bf16", "tvm", "tvm:bf16", "tvm:int8"]


def cell(name: str, kind: str, hidden: int, batches: list[int], seq: int = 25, **rnn: Any) -> dict[str, Any]:
    return {"name": name, "input": {"type": "features", "features": hidden},
            "rnn": {"cell": kind, "hidden_size": hidden, **rnn}, "output": {"mode": "many_to_many"},
            "shapes": {"batch_sizes": batches, "seq_lens": [seq]}}


MODELS = {
    "lstm512": cell("lstm512", "lstm", 512, [1, 4, 16]),  # DeepBench's inference LSTM cells (T 25)
    "lstm1024": cell("lstm1024", "lstm", 1024, [1, 4, 16]),
    "gru512": cell("gru512", "gru", 512, [1, 4]),
    "rnn512": cell("rnn512", "rnn", 512, [1, 4], nonlinearity="tanh"),
    "lstm256": cell("lstm256", "lstm", 256, [1, 16], seq=64),
}
STREAM = {"name": "stream256", "input": {"type": "features", "features": 40},
          "rnn": {"cell": "lstm", "hidden_size": 256, "state": True}, "output": {"mode": "many_to_many"},
          "shapes": {"batch_sizes": [1], "seq_lens": [1]}}


def table(model: str, report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["rows"] if r["model"] == model and r.get("median_ms")]
    errors = {b: v.get("rel_err") for b, v in report["models"][model]["backends"].items()}
    status = {b: (v["status"], v.get("reason")) for b, v in report["models"][model]["backends"].items()}
    names = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    out = [f"### {model}", "", "| batch | " + " | ".join(names) + " | tvm:int8 / ort:int8 | tvm:int8 / best fp32 |"
           " tvm:bf16 / ov:bf16 | tvm / best(ort, ov) |", "|---" * (len(names) + 5) + "|"]
    for batch in sorted({r["batch_size"] for r in rows}):
        at = {r["backend"]: r for r in rows if r["batch_size"] == batch}

        def ms(b: str) -> float | None:
            return at[b]["median_ms"] if b in at else None

        def ratio(a: str, *b: str) -> str:
            best = min((ms(x) for x in b if ms(x)), default=None)
            return f"{ms(a) / best:.2f}" if ms(a) and best else "-"

        cells = [f"{at[b]['median_ms']:.3f} ({at[b]['iqr_ms']:.3f})" if b in at else "-" for b in names]
        out.append(f"| {batch} | " + " | ".join(cells) + f" | {ratio('tvm:int8', 'onnxruntime:int8')} | "
                   f"{ratio('tvm:int8', 'onnxruntime', 'openvino', 'tvm')} | {ratio('tvm:bf16', 'openvino:bf16')} | "
                   f"{ratio('tvm', 'onnxruntime', 'openvino')} |")
    out += ["", "rel_err vs float64: " + ", ".join(f"{b} {errors[b]:.2e}" for b in names if errors.get(b) is not None)]
    out += [f"not run: {b}: {s} ({why})" for b, (s, why) in status.items() if s != "ok"]
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/precision")
    p.add_argument("--models", default=",".join(MODELS), help=f"some of {', '.join(MODELS)}")
    p.add_argument("--chain", type=int, default=1000, help="calls of the int8 stream check (0: none)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Precisions side by side", ""]
    for name in args.models.split(","):
        spec = out / f"{name}.yaml"
        spec.write_text(yaml.safe_dump(MODELS[name], sort_keys=False))
        report = api.bench(spec, "cpu", BACKENDS, out_dir=out / name, render_report=False)
        if "roof" in report.get("environment", {}) and not any(x.startswith("roof:") for x in lines):
            lines.insert(2, f"roof: {report['environment']['roof']}\n")
        lines += table(name, report)
        print("\n".join(table(name, report)), flush=True)
    if args.chain:
        spec = out / "stream.yaml"
        spec.write_text(yaml.safe_dump(STREAM, sort_keys=False))
        chained = api.verify(spec, "cpu", ["onnxruntime", "onnxruntime:int8", "tvm", "tvm:int8", "tvm:bf16"],
                             chain=args.chain)
        lines += [f"### int8 stream: `verify --chain {args.chain}` (LSTM 256, 40 features, 1 step per call)", "",
                  "| backend | max_abs_err | rel_err | tolerance | passed |", "|---|---|---|---|---|"]
        for b, rec in chained.backends.items():
            v = rec.verification
            if v is not None:
                lines.append(f"| {b} | {v.max_abs_err:.2e} | {v.rel_err:.2e} | {v.tolerance:g} | {v.passed} |")
    text = "\n".join(lines) + "\n"
    (out / "precision.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
