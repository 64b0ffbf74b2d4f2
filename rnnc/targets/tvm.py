"""Apache TVM: our own lowering of the ONNX graph (rnnc.compiler.tvm), one exported library.

Artifacts under DIR/tvm/: `model.so` (a Relax VM executable, batch and sequence symbolic, the
weights inside) and `tvm.json` (target, host CPU and ISA, tuning, layers, build time and size),
so that loading needs TVM's runtime alone and no recompilation, also on another machine of the
same ISA; another ISA is refused with a sentence (`target.check_host`).

Options (`build(..., options)`): `tune_s` (seconds of search budget, 0 or absent: none; the records
are cached on disk, see `rnnc.compiler.tvm.tune`), `tune_cache` (a directory for those records),
`tuning` ({"batch_tile": n, "gemm_rows": m}: fixed tiles, no cache, no search), `mcpu` (LLVM's name of
the CPU to build for, e.g. "x86-64", in place of this machine's).

"Built but not verified": `available(target)` answers whether the artifact can be *built* here;
`runnable(target)` whether it can also *run* here (for `--target cuda` on a machine without a GPU,
"no CUDA device ..."). `build` cross-compiles and returns its artifacts either way.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from rnnc.compiler.tvm import lower, tune
from rnnc.compiler.tvm import target as host
from rnnc.errors import Unsupported, UserError
from rnnc.graphs.model import Model
from rnnc.records.manifest import Manifest
from rnnc.targets.base import Arrays, Call, Runner, manifest_io

ORDER = 3
LIBRARY = "tvm/model.so"
RECORD = "tvm/tvm.json"
FORMAT = 1


def available(target: str) -> str | None:
    """None when the artifact can be built here (for CUDA: even with no device to run it)."""
    try:
        import tvm  # noqa: F401
    except ImportError as err:
        return f"apache-tvm is not installed ({err})"
    if target == "cuda":
        return host.cuda_build_reason()
    return None


def runnable(target: str) -> str | None:
    """None when a TVM artifact for `target` can run here, else why not (it may still be built)."""
    if reason := available(target):
        return reason
    if target == "cuda":
        return host.cuda_build_reason() or host.cuda_device_reason()
    return None


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any]) -> list[str]:
    import tvm

    out_dir = Path(out_dir)
    (out_dir / "tvm").mkdir(parents=True, exist_ok=True)
    if model.onnx is None:
        raise Unsupported(f"no ONNX graph: {model.extra.get('no_onnx', 'the model has none')}")
    if model.spec is not None and model.dtype != "float32":  # a spec's graph is float32; torch runs its dtype
        raise Unsupported(f"the exported graph is float32; the spec's {model.dtype} runs on torch and torchscript")
    if target == "cuda":
        if reason := host.cuda_build_reason():
            raise Unsupported(f"cannot build for CUDA: {reason}")
        tvm_target = host.cuda_target()
    else:  # `mcpu`: an older CPU than this one, for a portable library or to measure what the ISA is worth
        tvm_target = {"kind": "llvm", "mcpu": options["mcpu"]} if options.get("mcpu") else host.host_target()
    started = time.perf_counter()
    tuning, tune_record = tune.choose(model, target, tvm_target, options)
    lowered = lower.lower(model.onnx, "cuda" if target == "cuda" else "llvm", tuning)
    executable = tvm.compile(lowered.module, tvm.target.Target(tvm_target))
    library = out_dir / LIBRARY
    executable.export_library(str(library))
    record = {
        "format": FORMAT,
        "target": target,
        "tvm_target": tvm_target,
        "host": host.host_record(tvm_target if target == "cpu" else tvm_target["host"]),
        "tvm_version": tvm.__version__,
        "inputs": lowered.inputs,
        "outputs": lowered.outputs,
        "tuning": {**tuning.as_dict(), **tune_record},
        "layers": [_jsonable(layer) for layer in lowered.layers],
        "build_s": round(time.perf_counter() - started, 3),
        "library_bytes": library.stat().st_size,
    }
    (out_dir / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return [LIBRARY, RECORD]


def load(out_dir: Path, manifest: Manifest, target: str, threads: int | None) -> Runner:
    """The library's VM; `threads` sizes TVM's pool (the calling thread's), None leaves it as it is."""
    out_dir = Path(out_dir)
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except FileNotFoundError as err:
        raise UserError(f"{out_dir / RECORD}: missing; rebuild with `rnnc compile ... --backends tvm`") from err
    if record.get("format") != FORMAT:
        raise UserError(f"{out_dir / RECORD}: format {record.get('format')} is not {FORMAT}; rebuild it")
    if record["target"] != target:
        raise UserError(f"the TVM library in {out_dir} was built for {record['target']}, not {target}")
    host.check_host(record["host"])
    if target == "cuda" and (reason := host.cuda_device_reason()):
        raise UserError(f"cannot run the CUDA library here: {reason}")
    host.configure_threads(threads)
    return VMRunner(out_dir / LIBRARY, manifest, target)


class VMRunner(Runner):
    """The library's Relax VM: inputs copied to the device once per bind, outputs back as numpy."""

    def __init__(self, path: Path, manifest: Manifest, target: str) -> None:
        import tvm
        from tvm import relax

        super().__init__(*manifest_io(manifest))
        self.device = tvm.cuda(0) if target == "cuda" else tvm.cpu(0)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), self.device)
        self.main = self.vm["main"]

    def _prepare(self, arrays: Arrays) -> Call:
        import tvm

        args = [tvm.runtime.tensor(arrays[n], self.device) for n in self.input_names]
        names, main = self.output_names, self.main

        def call() -> Arrays:
            result = main(*args)
            results = [result] if len(names) == 1 else list(result)
            return {n: _host(r) for n, r in zip(names, results)}

        return call


def _host(value: Any) -> np.ndarray:
    """A VM result as numpy: a tensor, or a shape (a graph output computed by `Shape` stays a
    shape value in Relax) as int64."""
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.array([int(d) for d in value], dtype=np.int64)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value
