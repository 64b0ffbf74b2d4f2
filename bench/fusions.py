"""What each fusion of ours pays over TVM's own ONNX frontend alone, measured side by side.

    python bench/fusions.py MODEL [--shapes ...] [--batch-sizes 1,8] [--threads N]

MODEL is a spec or a model file, as `rnnc compile` takes it. For each variant of the lowering,
`absorb`'s rewrites on or off: all (the default build), no dense (MatMul + Add + activation left
to upstream's converters and TVM's default schedules), no layouts (the Transposes and Reshapes
around recurrent nodes left as the exporter wrote them), no conv (Conv, BatchNormalization and
their activation left to upstream), none, one library is built and every
variant is timed in the same process, interleaved round by round (`rnnc.bench.measure`), on the
same inputs. Prints medians with their IQR and each variant's time over the default build's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rnnc import stats
from rnnc.bench import measure
from rnnc.compiler.tvm import target as host
from rnnc.compiler.tvm.lower import lower
from rnnc.graphs import load_model
from rnnc.graphs.from_onnx import parse_shapes

VARIANTS = {"all": ("dense", "layouts", "conv"), "no dense": ("layouts", "conv"), "no layouts": ("dense", "conv"),
            "no conv": ("dense", "layouts"), "none": ()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--shapes")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=host.cpu_count())
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of samples per variant and batch")
    args = parser.parse_args(argv)

    import tvm
    from tvm import relax

    model = load_model(Path(args.model), parse_shapes(args.shapes) if args.shapes else None)
    host.configure_threads(args.threads)
    target = tvm.target.Target(host.host_target())
    vms = {}
    for name, fusions in VARIANTS.items():
        lowered = lower(model.onnx, "llvm", fusions=fusions)
        vms[name] = relax.VirtualMachine(tvm.compile(lowered.module, target), tvm.cpu())
        print(f"built {name}: {len(lowered.layers)} kernels of ours", file=sys.stderr)
    rng = np.random.default_rng(0)
    settings = measure.Settings(min_time_s=args.min_time)
    print(f"{model.name}: TVM variants, {args.threads} threads, medians (IQR) in ms; ratio = variant / all")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        seq = model.shapes[0][1]
        arrays = model.random_inputs(batch, seq, rng)
        args_in = [tvm.runtime.tensor(np.require(arrays[t.name], requirements="C")) for t in model.inputs]
        funcs = {name: measure.time_calls(lambda vm=vm: vm["main"](*args_in)) for name, vm in vms.items()}
        results, _ = measure.measure_interleaved(funcs, settings)
        base = stats.median(results["all"].samples_ms)
        for name, m in results.items():
            med, spread = stats.median(m.samples_ms), stats.iqr(m.samples_ms)
            print(f"  batch {batch:3d} seq {seq:4d}  {name:10s} {med:9.3f} ({spread:.3f})  x{med / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
