"""Stability check of the bench harness and the gate (issue 4's acceptance experiment).

Runs the same small sweep N+1 times on unchanged code, gates runs 1..N against run 0 (all should
pass), then N more runs where one backend does a quarter more work through the TEST-ONLY
`extra_work` option of `run_bench` (all should fail), and prints each row's spread across runs.

    python bench/stability.py bench/suite/timeseries_lstm.yaml --out build/stability \\
        --seq-lens 16,64 --batch-sizes 1 --slow onnxruntime --runs 5 --threads 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnc import pipeline, targets
from rnnc import stats
from rnnc.bench import Settings, run_bench
from rnnc.reports import gate, schema
from rnnc.reports.tables import text_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("--out", default="build/stability")
    p.add_argument("--seq-lens", default="16,64")
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--backends", default="all")
    p.add_argument("--slow", default="onnxruntime", help="the backend given 25%% more work")
    p.add_argument("--extra", type=float, default=0.25)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-regression", type=float, default=0.10)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="threads per runtime (0: runtime defaults)")
    args = p.parse_args(argv)

    out = Path(args.out)
    backends = targets.parse_backends(args.backends)
    seqs = [int(x) for x in args.seq_lens.split(",")]
    batches = [int(x) for x in args.batch_sizes.split(",")]
    model_dir = out / "compiled"
    if not (model_dir / "manifest.json").is_file():
        from rnnc.pipeline import compile_model
        from rnnc.graphs import load_model

        model = load_model(args.spec)
        model.shapes = [(b, s) for b in batches for s in seqs]
        compile_model(model, "cpu", backends, model_dir)
    pipeline.open_dir(model_dir)
    settings = Settings(min_time_s=args.min_time)

    def sweep(name: str, extra: dict[str, float] | None = None) -> Path:
        report = run_bench(model_dir, "cpu", backends, seqs, batches, out / name, False, False,
                           settings=settings, extra_work=extra, threads=args.threads or None)
        print(f"{name}: exit {report['exit_code']}", file=sys.stderr)
        return out / name / "report.json"

    base = sweep("run0")
    same = [sweep(f"run{i}") for i in range(1, args.runs + 1)]
    slow = [sweep(f"slow{i}", {args.slow: args.extra}) for i in range(1, args.runs + 1)]
    results, normalized, common = [], [], []
    for path in same + slow:
        code, table = gate(path, base, args.max_regression, normalize=False)
        results.append((path.parent.name, code, table))
        normalized.append(gate(path, base, args.max_regression, normalize=True)[0])
        common.append(gate(path, base, args.max_regression, normalize=False, common_mode=True)[0])
    for name, code, table in results:
        print(f"\n=== gate {name} against run0: exit {code}\n{table}")

    passes = sum(code == 0 for _, code, _ in results[: args.runs])
    fails = sum(code == 1 for _, code, _ in results[args.runs:])
    print(f"\nunchanged code: gate passed {passes}/{args.runs} at {args.max_regression:.0%}")
    print(f"{args.slow} +{args.extra:.0%} work: gate failed {fails}/{args.runs}")
    for label, codes in (("calibration-normalised (--normalize)", normalized),
                         ("common-mode (relative to the shape's drift)", common)):
        print(f"{label}: passed {sum(c == 0 for c in codes[: args.runs])}/{args.runs}, "
              f"failed {sum(c == 1 for c in codes[args.runs:])}/{args.runs}")
    print("\nper-row spread of the median across the unchanged runs (run0..run{}):".format(args.runs))
    print(spread_table([base] + same))
    return 0 if passes == args.runs and fails == args.runs else 1


def spread_table(paths: list[Path]) -> str:
    reports = [schema.load(p) for p in paths]
    rows = []
    for r in reports[0]["rows"]:
        if r["status"] != "ok":
            continue
        key = schema.row_key(r)
        medians = [x["median_ms"] for rep in reports for x in rep["rows"] if schema.row_key(x) == key]
        cvs = [x["cv"] for rep in reports for x in rep["rows"] if schema.row_key(x) == key]
        rows.append((key[1], str(key[2]), str(key[3]), f"{min(medians):.4g}", f"{max(medians):.4g}",
                     f"{max(medians) / min(medians) - 1:.1%}", f"{stats.cv(medians):.1%}",
                     f"{stats.median(cvs):.1%}"))
    return text_table(("backend", "batch", "seq", "min median ms", "max median ms", "max/min-1",
                       "cv of medians", "median in-run cv"), rows, right=range(1, 8))


if __name__ == "__main__":
    sys.exit(main())
