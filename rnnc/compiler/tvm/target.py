"""The machine a TVM artifact is built for and run on: CPU model and ISA, CUDA, thread count.

The CPU target is the host's own, asked of TVM's LLVM (`llvm_get_system_cpu`), never hard-coded:
these machines vary (Zen 4, Sapphire Rapids). `host_record()` is what the build writes beside its
library; `check_host(record)` is what loading runs first, so that an artifact compiled for AVX-512
on a CPU without it is refused with a sentence rather than killed by SIGILL in the first kernel.
"""
from __future__ import annotations

import os
import platform
import shutil
from typing import Any

from rnnc.errors import UserError

# ISA extensions that change what code LLVM emits; the others do not matter for a refusal
_ISA = ("sse4.2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl",
        "avx512cd", "avx512vnni", "avx512bf16", "avx512fp16", "avx512vbmi", "avx512ifma",
        "amx-tile", "amx-bf16", "amx-int8")
AMX = {"bf16": ("amxtile", "amxbf16"), "int8": ("amxtile", "amxint8")}  # the host flags (normalised) each AMX body needs


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def configure_threads(count: int | None) -> int:
    """Use `count` threads in TVM's CPU thread pool; None leaves the pool as it is. Returns the count
    in force (`tvm.runtime.num_threads()`).

    Only `runtime.config_threadpool` is called; the environment is never written. Three TVM 0.27
    facts shape the call. Without a CPU list the runtime caps the count at its own default
    (TVM_NUM_THREADS, else half the hardware threads on x86: one on a 2-vCPU machine, where every
    parallel loop then runs inline), so a list of CPU ids is passed, whose length sets that cap.
    The pool's size is fixed when it is first created (by this call, a query such as None's, or
    the first parallel launch), so the first call sizes it for every core we may use (or `count`,
    if more); later calls choose any count up to that size. And the pool and its cap belong to the
    calling thread: configure the thread that runs the kernels.
    """
    import tvm

    if count is not None:
        if count < 1:
            raise ValueError(f"thread count {count}: must be at least 1")
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [*range(cpu_count())]
        cpus = [str(allowed[i % len(allowed)]) for i in range(max(count, len(allowed)))]
        tvm.get_global_func("runtime.config_threadpool")(0, count, cpus)  # mode 0: the runtime's default
    return int(tvm.runtime.num_threads())


def step_chunks(r_bytes: int) -> int:
    """`LayerSpec.chunks` for a layer whose R (one direction) has `r_bytes`: this host's core count
    where each core's share of R is more than half its L2 (then the cores' next step finds the
    panels they read last still cached, see `spec.item_order`), else 0 (R stays in L2 anyway).

    Measured on the 2-core Sapphire Rapids VM (2 MiB L2 per core; one LSTM layer, T 25, medians of
    interleaved bursts, ms, in order vs reversed): fp32 H512 (R 4 MiB) b1 1.57 vs 1.31, b4 2.35 vs
    2.13, b16 13.0 vs 12.6; int8 H1024 (R 4 MiB) b4 2.15 vs 2.02, b16 5.01 vs 4.73, b1 even; fp32
    H256 (R 1 MiB, in L2) 1.02 vs 1.07 at b1: no gain where R fits."""
    from rnnc.host import caches

    cores, found = cpu_count(), caches()
    return cores if cores > 1 and found.source != "fallback" and r_bytes / cores > found.l2_bytes / 2 else 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """The host's ISA flags, normalised (lower case, no '_' or '.'); None where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return {_norm(x) for x in line.split(":", 1)[1].split()}
    except OSError:
        return None
    return None


def _norm(flag: str) -> str:
    return flag.lower().replace("_", "").replace(".", "").replace("-", "")


def amx_reason(precision: str = "bf16") -> str | None:
    """None where this host's CPU flags have AMX tiles with bf16 or int8 (Sapphire Rapids on), else why not.

    Asked of the CPU flags, not of LLVM's features for the CPU it names: in a VM LLVM may name an
    older model (rocketlake here, on Sapphire Rapids) whose features lack AMX; the build then adds
    the AMX features to the target itself (`amx.target_with_amx`)."""
    flags = cpu_flags()
    if flags is None:
        return "the CPU flags are unknown here (no /proc/cpuinfo)"
    missing = [f for f in AMX[precision] if f not in flags]
    if missing:
        return f"this CPU ({cpu_model()}) has no {', '.join(missing)}"
    return None


def host_target() -> dict[str, Any]:
    """The llvm target dict for this CPU, e.g. {"kind": "llvm", "mcpu": "sapphirerapids"}."""
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu()
    triple = codegen.llvm_get_system_triple()
    if not mcpu or mcpu == "generic" or not codegen.llvm_is_valid_cpu(mcpu, triple):
        # a CPU this LLVM does not know by name: the x86-64 level its flags reach, else generic
        flags = cpu_flags() or set()
        levels = (("x86-64-v4", {"avx512f", "avx512bw", "avx512dq", "avx512vl"}), ("x86-64-v3", {"avx2", "fma", "bmi2"}))
        mcpu = next((name for name, need in levels if need <= flags and codegen.llvm_is_valid_cpu(name, triple)), "")
    return {"kind": "llvm", "mcpu": mcpu} if mcpu else {"kind": "llvm"}


def llvm_features(target: dict[str, Any]) -> set[str]:
    """The ISA features LLVM generates code with for this llvm target (e.g. "avx512vnni")."""
    import tvm
    from tvm.target import codegen

    return set(codegen.llvm_get_cpu_features(tvm.target.Target(target)))


def vector_bits(target: dict[str, Any]) -> int:
    """The widest vector registers the llvm target has: 512 (AVX-512), 256 (AVX2), else 128."""
    import tvm
    from tvm.target import codegen

    features = set(codegen.llvm_get_cpu_features(tvm.target.Target(target)))
    return 512 if "avx512f" in features else 256 if "avx2" in features else 128


def host_record(target: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps about the build machine and the ISA the library needs."""
    import tvm
    from tvm.target import codegen

    features = codegen.llvm_get_cpu_features(tvm.target.Target(target))
    needs = sorted(f for f in _ISA if f in features)
    return {
        "target": target,
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "isa": needs,
        "llvm": codegen.llvm_version_major(),
    }


def check_host(record: dict[str, Any]) -> None:
    """Refuse, with a reason, a CPU library whose ISA this machine lacks."""
    if record.get("machine") and record["machine"] != platform.machine():
        raise UserError(f"the TVM library was built for {record['machine']}, this machine is {platform.machine()}: "
                        "rebuild it here with `rnnc compile`")
    flags = cpu_flags()
    if flags is None:
        return
    missing = [f for f in record.get("isa", []) if _norm(f) not in flags]
    if missing:
        raise UserError(
            f"the TVM library was built for {record.get('target', {}).get('mcpu', '?')} ({record.get('cpu', '?')}) "
            f"and needs {', '.join(missing)}, which this CPU ({cpu_model()}) lacks: rebuild it here with `rnnc compile`"
        )


def cuda_device_reason() -> str | None:
    """None when a CUDA device can run TVM code here, else why not."""
    try:
        import tvm

        if not tvm.cuda(0).exist:
            return "no CUDA device on this machine (the library was cross-compiled, not verified)"
    except Exception as err:  # noqa: BLE001 - any failure to reach a device is a reason
        return f"CUDA runtime unavailable ({err})"
    return None


def cuda_build_reason() -> str | None:
    """None when CUDA code can be generated and compiled here, else why not."""
    import tvm

    if not tvm.get_global_func("target.build.cuda", allow_missing=True):
        return "this TVM build has no CUDA code generator"
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "nvcc is not on PATH"
    return None


def cuda_target() -> dict[str, Any]:
    """The CUDA target: the device's own arch when there is one, else sm_80 (A100/H100 run it)."""
    arch = "sm_80"
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            arch = "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # noqa: BLE001
        pass
    return {"kind": "cuda", "arch": arch, "host": host_target()}
