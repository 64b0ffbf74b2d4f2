"""Apache TVM: our own lowering of the ONNX graph (rnnc.compiler.tvm), one exported library.

Artifacts under DIR/tvm/ (`tvm:bf16` under DIR/tvm-bf16/, `tvm:int8` under DIR/tvm-int8/): `model.so` (a Relax VM executable, batch and sequence symbolic, the
weights inside) and `tvm.json` (target, host CPU and ISA, tuning, layers, build time and size),
so that loading needs TVM's runtime alone and no recompilation, also on another machine of the
same ISA; another ISA is refused with a sentence (`target.check_host`).

Options (`build(..., options)`): `tune_s` (seconds of search budget, 0 or absent: none; the records
are cached on disk, see `rnnc.compiler.tvm.tune`), `tune_cache` (a directory for those records),
`tuning` ({"batch_tile": n, "gemm_rows": m}: fixed tiles, no cache, no search), `mcpu` (LLVM's name of
the CPU to build for, e.g. "x86-64", in place of this machine's), `generation` ("fused", the
default on CPU: a generative spec model's steps all in one PrimFunc, `rnnc.compiler.tvm.fused`;
"loop": its ONNX Loop as a recursive Relax function, as on CUDA and for imported models; tvm.json
records which as "generation"), `int8_path` ("auto", the default: AMX tiles (tdpbusd) where the
host's CPU flags have amx_tile and amx_int8, Linux grants the tile permission and the target has
avx512vnni, else VNNI where the target's LLVM features have avx512vnni, else the fallback; "amx",
"vnni" or "fallback" to force one), `bf16_path`
("auto", the default: AMX tiles where this host's CPU flags have amx_tile and amx_bf16 and Linux
grants the tile permission, from the batch `amx.crossover` measured faster, else widened; "amx":
the AMX body at every batch; "widened": never AMX; tvm.json records which, and why not AMX).

Precisions (`PRECISIONS`): fp32; bf16 and int8 store the recurrent layers' W and R below float32
(`rnnc.compiler.tvm.quant`: bf16 widened in the inner loop; int8 with a scale per gate row, on
VNNI's vpdpbusd with activations quantized per row, or widened to float32 without VNNI); the state,
the gates and the dense head stay float32. tvm.json records the precision, the ISA path taken and
the scales' granularity; a record of another precision is refused at load. A generative or
streaming spec model runs its layer kernels on the graph (the fused generation kernels are
float32), recorded as its "generation".

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

from rnnc.compiler.tvm import amx, fused, lower, tune
from rnnc.compiler.tvm import target as host
from rnnc.errors import Unsupported, UserError
from rnnc.graphs.model import Model
from rnnc.records.manifest import Manifest
from rnnc.targets.base import Arrays, Call, Runner, manifest_io

ORDER = 3
PRECISIONS = ("fp32", "bf16", "int8")
ZERO_COPY_BYTES = 1 << 16  # inputs at least this big are bound once (zero-copy when aligned); smaller are staged
LIBRARY = "tvm/model.so"
RECORD = "tvm/tvm.json"
FORMAT = 1
INT8_PATHS = ("auto", "amx", "vnni", "fallback")
BF16_PATHS = ("auto", "amx", "widened")
SCALES = {"bf16": "none (bf16 keeps float32's exponent)",
          "int8": "weights: one scale per gate row (packed column) of W and of R; activations (VNNI): one "
                  "scale per row of X per call, per row of H per step, zero point 128"}


def artifacts(precision: str) -> tuple[str, str]:
    """The library and record paths of a precision, relative to DIR: fp32 keeps tvm/ (older DIRs load)."""
    if precision == "fp32":
        return LIBRARY, RECORD
    return f"tvm-{precision}/model.so", f"tvm-{precision}/tvm.json"


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


def build(model: Model, out_dir: Path, target: str, options: dict[str, Any], precision: str) -> list[str]:
    import tvm

    out_dir = Path(out_dir)
    library_path, record_path = artifacts(precision)
    (out_dir / library_path).parent.mkdir(parents=True, exist_ok=True)
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
    if precision != "fp32" and target == "cuda":
        raise Unsupported(f"tvm:{precision} is CPU only: the CUDA layer kernels are float32")
    started = time.perf_counter()
    quantized = _precision_record(precision, tvm_target, options)
    vnni = precision == "int8" and quantized.get("isa_path") in ("vnni", "amx")  # AMX's int8 reads VNNI's packing
    amx_mode = quantized.get("amx", {}).get("mode")
    if amx_mode:  # the LLVM CPU name may lack AMX's features where the host has them (a VM)
        tvm_target = amx.target_with_amx(tvm_target)
    generation = _generation(model, target, options, precision)
    if generation in ("fused", "fused-stream"):  # the search times the graph's kernels, not the generation kernel: none
        tuning, tune_record = tune.choose(model, target, tvm_target, {k: v for k, v in options.items()
                                                                      if k not in ("tune_s", "tune")})
        lowered = fused.fused_module(model, tuning)
    else:
        with amx.building(amx_mode):
            tuning, tune_record = tune.choose(model, target, tvm_target, options, precision, vnni)
            lowered = lower.lower(model.onnx, "cuda" if target == "cuda" else "llvm", tuning, precision=precision,
                                  vnni=vnni)
        if amx_mode and not any(layer.get("precision") == precision and amx.eligible(_spec_of(layer))
                                for layer in lowered.layers):
            quantized["amx"]["note"] = "no layer takes the AMX body (GRU with r before R, sequence_lens)"
    executable = tvm.compile(lowered.module, tvm.target.Target(tvm_target))
    library = out_dir / library_path
    executable.export_library(str(library))
    record = {
        "format": FORMAT,
        "target": target,
        "precision": precision,
        **quantized,
        "tvm_target": tvm_target,
        "host": host.host_record(tvm_target if target == "cpu" else tvm_target["host"]),
        "tvm_version": tvm.__version__,
        "inputs": lowered.inputs,
        "outputs": lowered.outputs,
        "tuning": {**tuning.as_dict(), **tune_record},
        "layers": [_jsonable(layer) for layer in lowered.layers],
        **({"generation": generation} if generation else {}),
        "build_s": round(time.perf_counter() - started, 3),
        "library_bytes": library.stat().st_size,
    }
    (out_dir / record_path).write_text(json.dumps(record, indent=2) + "\n")
    return [library_path, record_path]


def _precision_record(precision: str, tvm_target: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """What tvm.json says about the weights' precision: the ISA path and the scales; {} for fp32.

    int8 takes AMX tiles where VNNI is there too and the host can run them (as bf16's, below), else
    VNNI where the LLVM features of the target being built for have avx512vnni (what the library's
    code needs; `check_host` refuses it on a CPU without), else the widened fallback with the
    sentence saying why; option int8_path forces one."""
    if precision == "fp32":
        return {}
    if precision == "bf16":
        return _bf16_record(tvm_target, options)
    how = options.get("int8_path", "auto")
    if how not in INT8_PATHS:
        raise UserError(f"tvm option int8_path={how!r}: expected one of {', '.join(INT8_PATHS)}")
    has = "avx512vnni" in host.llvm_features(tvm_target)
    if how in ("vnni", "amx") and not has:
        raise Unsupported(f"tvm option int8_path={how}: the target ({tvm_target.get('mcpu', 'generic')}) has no "
                          "AVX512-VNNI")
    if how in ("amx", "auto") and has:
        why = (f"the library is built for another CPU (option mcpu={options['mcpu']})" if options.get("mcpu")
               else host.amx_reason("int8") or amx.request_permission())
        if not why:
            return {"isa_path": "amx", "scales": SCALES["int8"],
                    "note": "int8 products on AMX tiles (tdpbusd, u8 x s8 -> s32): the input projection at every "
                            "batch, a step's products from the crossover batch (VNNI's below it)",
                    "amx": {"mode": how, "permission": "granted (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA)",
                            "from_batch": "every batch" if how == "amx" else
                            f"projection: every batch; steps: from {amx.INT8_STEPS_FROM} where they are large, "
                            f"else the whole body from {amx.SMALL_FROM} (measured)"}}
        if how == "amx":
            raise Unsupported(f"tvm option int8_path=amx: {why}")
        return {"isa_path": "vnni", "scales": SCALES["int8"], "amx": {"mode": None, "why_not": why}}
    if how == "vnni" or (how == "auto" and has):
        return {"isa_path": "vnni", "scales": SCALES["int8"],
                **({"amx": {"mode": None, "why_not": "forced by option int8_path=vnni"}} if how == "vnni" else {})}
    why = ("forced by option int8_path=fallback" if how == "fallback" else
           f"the target ({tvm_target.get('mcpu', 'generic')}) has no AVX512-VNNI")
    return {"isa_path": "fallback", "scales": "weights: one scale per gate row (packed column) of W and of R",
            "fallback": f"int8 weights widened to float32 in the inner loop against float32 activations: {why}"}


def _bf16_record(tvm_target: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """bf16's path: AMX tiles (`amx`) where the host has them, the build is for this host and Linux
    grants the tile permission, else widened; "amx" in isa_path, and under "amx" the mode (auto: from
    `amx.crossover`'s batch; amx: every batch) or, for widened, why not."""
    how = options.get("bf16_path", "auto")
    if how not in BF16_PATHS:
        raise UserError(f"tvm option bf16_path={how!r}: expected one of {', '.join(BF16_PATHS)}")
    widened = {"isa_path": "widened", "scales": SCALES["bf16"],
               "note": "bf16 weights widened to float32 by a shift in the inner loop, FMA in float32 "
                       "(needs no avx512_bf16)"}
    if how == "widened":
        return {**widened, "amx": {"mode": None, "why_not": "forced by option bf16_path=widened"}}
    why = (f"the library is built for another CPU (option mcpu={options['mcpu']})" if options.get("mcpu")
           else host.amx_reason() or amx.request_permission())
    if why:
        if how == "amx":
            raise Unsupported(f"tvm option bf16_path=amx: {why}")
        return {**widened, "amx": {"mode": None, "why_not": why}}
    return {"isa_path": "amx", "scales": SCALES["bf16"],
            "note": "bf16 products on AMX tiles (tdpbf16ps): X rows and H per step rounded to bf16, fp32 "
                    "accumulation, float32 state and gates; below the crossover batch the widened kernel",
            "amx": {"mode": how, "permission": "granted (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA)",
                    "from_batch": "every batch" if how == "amx" else
                    f"1 for steps of >= SERIAL_BELOW multiply-adds per row, else {amx.SMALL_FROM} (measured)"}}


def _spec_of(layer: dict[str, Any]) -> Any:
    """The LayerSpec of a lowered layer's record."""
    import dataclasses

    from rnnc.compiler.tvm.spec import LayerSpec

    return LayerSpec(**{f.name: layer[f.name] for f in dataclasses.fields(LayerSpec) if f.name in layer})


def _generation(model: Model, target: str, options: dict[str, Any], precision: str = "fp32") -> str | None:
    """How a generative spec model's steps run: "fused" (CPU: every step in one PrimFunc, see
    `fused`), "loop" (CUDA, or option generation=loop: the ONNX Loop as a recursive Relax function);
    None for other models (an imported ONNX model's Loop is always the Loop path).

    A stateful spec model (`rnn.state`, many_to_many / many_to_one, `fused.streams`) on CPU:
    "fused-stream" (the default: every step of a chunk in one PrimFunc, `generate`'s sequence
    mode) or, with option generation=layered (or loop), "layered": our layer kernels on the graph.
    Below fp32 (the fused kernels are float32): "layered" or "loop"."""
    if precision != "fp32" and fused.streams(model.spec):
        return "layered"
    if precision != "fp32" and model.spec is not None and model.spec.generative:
        return "loop"
    if fused.streams(model.spec):
        how = options.get("generation", "auto")
        if how not in ("auto", "fused", "layered", "loop"):
            raise UserError(f"tvm option generation={how!r}: expected fused or layered")
        if how == "auto":  # by size: the fused chunk wins where its rows run as row tiles, see fused
            how = "fused" if fused.stream_by_default(model.spec) else "layered"
        return "fused-stream" if target == "cpu" and how == "fused" else "layered"
    if model.spec is None or not model.spec.generative:
        return None
    if options.get("generation", "fused") not in ("fused", "loop"):
        raise UserError(f"tvm option generation={options['generation']!r}: expected fused or loop")
    return "fused" if target == "cpu" and options.get("generation", "fused") == "fused" else "loop"


def load(out_dir: Path, manifest: Manifest, target: str, threads: int | None, precision: str) -> Runner:
    """The library's VM; `threads` sizes TVM's pool (the calling thread's), None leaves it as it is."""
    out_dir = Path(out_dir)
    library_path, record_path = artifacts(precision)
    name = "tvm" if precision == "fp32" else f"tvm:{precision}"
    try:
        record = json.loads((out_dir / record_path).read_text())
    except FileNotFoundError as err:
        raise UserError(f"{out_dir / record_path}: missing; rebuild with `rnnc compile ... --backends {name}`") from err
    if record.get("format") != FORMAT:
        raise UserError(f"{out_dir / record_path}: format {record.get('format')} is not {FORMAT}; rebuild it")
    if record.get("precision", "fp32") != precision:
        raise UserError(f"{out_dir / record_path}: built at precision {record.get('precision', 'fp32')}, "
                        f"not {precision}; rebuild with `rnnc compile ... --backends {name}`")
    if record["target"] != target:
        raise UserError(f"the TVM library in {out_dir} was built for {record['target']}, not {target}")
    host.check_host(record["host"])
    if record.get("isa_path") == "amx" and (why := amx.request_permission()):  # else SIGILL in the first tile
        option = "int8_path=vnni" if precision == "int8" else "bf16_path=widened"
        raise UserError(f"{out_dir / record_path}: the library runs {precision} on AMX tiles, but {why}; rebuild it "
                        f"with tvm option {option} (or here: the build itself falls back where it is refused)")
    if target == "cuda" and (reason := host.cuda_device_reason()):
        raise UserError(f"cannot run the CUDA library here: {reason}")
    host.configure_threads(threads)
    return VMRunner(out_dir / library_path, manifest, target)


class VMRunner(Runner):
    """The library's Relax VM. On CPU, inputs and outputs cross without a copy where they can
    (DLPack): a large input is the VM's input as it is where it is 64-byte aligned, else copied
    once per bind into an aligned buffer; a small one is copied at each call into a staging
    tensor kept per input and shape (0.35 us, less than a DLPack import, and it leaves nothing
    allocated per call); outputs come back as numpy views of the VM's own tensors. `tvm.runtime.tensor` and `.numpy()` cost 14 and 7 us per array here, more
    than the VM's call itself (0.5 us), which is what a streaming call of one step pays. One call
    at a time per runner (the VM itself is not reentrant either)."""

    def __init__(self, path: Path, manifest: Manifest, target: str) -> None:
        import tvm
        from tvm import relax

        super().__init__(*manifest_io(manifest))
        self.device = tvm.cuda(0) if target == "cuda" else tvm.cpu(0)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), self.device)
        self.main = self.vm["main"]
        self.cpu = target == "cpu"
        self._staging: dict[tuple[str, tuple[int, ...], np.dtype], tuple[np.ndarray, Any]] = {}
        self._item = _array_getter()

    def _prepare(self, arrays: Arrays) -> Call:
        import tvm

        names, main = self.output_names, self.main
        copies: list[tuple[np.ndarray, np.ndarray]] = []
        if self.cpu:
            args = [self._feed(n, arrays[n], copies) for n in self.input_names]
        else:
            args = [tvm.runtime.tensor(arrays[n], self.device) for n in self.input_names]
        host = _view if self.cpu else _host

        count, item = len(names), self._item

        def call() -> Arrays:
            for src, dst in copies:
                np.copyto(dst, src)
            result = main(*args)
            if count == 1:
                return {names[0]: host(result)}
            return {n: host(item(result, i)) for i, n in enumerate(names)}

        return call

    def _feed(self, name: str, a: np.ndarray, copies: list[tuple[np.ndarray, np.ndarray]]) -> Any:
        import tvm

        if a.nbytes >= ZERO_COPY_BYTES:  # copied once per bind, not per call: a bench times the call
            if a.ctypes.data % 64 == 0 and a.flags.writeable:
                return tvm.runtime.from_dlpack(a)
            own = _aligned(a.shape, a.dtype)  # numpy's large arrays start 16 bytes into their pages
            np.copyto(own, a)
            return tvm.runtime.from_dlpack(own)
        key = (name, a.shape, a.dtype)
        if key not in self._staging:
            staged = _aligned(a.shape, a.dtype)
            self._staging[key] = (staged, tvm.runtime.from_dlpack(staged) if staged.size else
                                  tvm.runtime.tensor(staged, self.device))
        staged, tensor = self._staging[key]
        copies.append((a, staged))
        return tensor


def _array_getter() -> Any:
    """Element i of the VM's tuple of outputs in one FFI call: the container's Python __getitem__
    costs ~0.9 us an element, as much as the VM's whole call of a small step."""
    try:
        from tvm_ffi.container import _ffi_api

        return _ffi_api.ArrayGetItem
    except (ImportError, AttributeError):  # another tvm_ffi: the public indexing
        return lambda result, i: result[i]


def _aligned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An empty C-contiguous array whose data starts on a 64-byte boundary (what TVM's DLPack
    import requires, and what its kernels' vector loads assume)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _view(value: Any) -> np.ndarray:
    """A CPU result as numpy without a copy (DLPack), or `_host`'s copy where it cannot be."""
    try:
        return np.from_dlpack(value)
    except (TypeError, BufferError, RuntimeError, AttributeError):
        return _host(value)


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
