"""A history with a real step in it: is the step found at the right run, and drawn? (issue 11)

Appends `--runs` real benches of one compiled DIR to a fresh SQLite history through
`rnnc.api.bench(..., history=...)`; from run `--step-at` on, every backend does `--factor` times
the work per call (the TEST-ONLY `extra_work` busy-wait, recorded in each report). Each run is
recorded under the label `exp-NN` as its revision, since all of them run the same commit. Then
`rnnc history` finds the change points and writes the plot; this prints whether each row's step
is at the right run.

    python bench/history_step.py build/stability-ts/compiled-a --out build/history-step
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnc import api, history
from rnnc.bench import Settings
from rnnc.reports import trend


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a compiled DIR")
    p.add_argument("--out", default="build/history-step")
    p.add_argument("--backends", default="onnxruntime,tvm")
    p.add_argument("--seq-lens", default="16")
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--step-at", type=int, default=16, help="the first slower run (1-based)")
    p.add_argument("--factor", type=float, default=1.2)
    p.add_argument("--min-time", type=float, default=0.3)
    args = p.parse_args(argv)

    out = Path(args.out)
    store = out / "history.sqlite"
    store.unlink(missing_ok=True)
    backends = args.backends.split(",")
    for i in range(1, args.runs + 1):
        extra = {b: args.factor - 1 for b in backends} if i >= args.step_at else None
        report = api.bench(args.dir, "cpu", backends, seq_lens=[int(x) for x in args.seq_lens.split(",")],
                           batch_sizes=[int(x) for x in args.batch_sizes.split(",")], out_dir=out / f"run{i:02d}",
                           render_report=False, settings=Settings(min_time_s=args.min_time), threads=1,
                           extra_work=extra, history=str(store), revision=f"exp-{i:02d}")
        print(f"run {i:2d}: exit {report['exit_code']}, history run #{report['history_run']}", file=sys.stderr)
    text, written = api.history(str(store), out_dir=out)
    print(text)
    print("\n".join(f"wrote {p}" for p in written))
    found = trend.trends(history.load(str(store)))
    right = [t for t in found if [t.points[s.index][0].run_id for s in t.steps] == [args.step_at]]
    print(f"\n{len(right)} of {len(found)} rows: one step, found at run #{args.step_at}")
    return 0 if len(right) == len(found) else 1


if __name__ == "__main__":
    sys.exit(main())
