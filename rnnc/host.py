"""What machine and libraries a result came from: recorded in manifests and reports."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("rnnc", "numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "apache-tvm", "pydantic")


def versions() -> dict[str, str]:
    """Installed versions of rnnc and every library it may use (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def cpu() -> dict[str, object]:
    """CPU model, core count and the instruction-set extensions that matter for our kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {
        "model": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "isa": [f for f in wanted if f in flags],
    }


def gpu() -> str | None:
    """The CUDA device's name, or None (without initialising CUDA when torch is not loaded)."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no torch or a broken driver both mean "no GPU here"
        return None


def git_revision(root: Path | None = None) -> str | None:
    """The git revision of the checkout at `root` (default: rnnc's own, when run from one)."""
    root = root if root is not None else Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, object]:
    return {"cpu": cpu(), "gpu": gpu(), "os": platform.platform(), "versions": versions(), "git": git_revision()}


def cpu_count() -> int:
    """Cores this process may use (affinity-aware): the default thread count of every runtime."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes() -> int:
    """The machine's physical memory in bytes, capped by a cgroup memory limit; 0 when unknown.

    Total memory, not MemAvailable: the limits that use it (`rnnc.graphs.limits`) refuse a spec
    that cannot fit on this machine at all, and that answer must not change with what else happens
    to run, or with how much page cache the kernel keeps at the moment. A container's cgroup limit
    is the most this process can ever get, so it caps the figure.
    """
    total = 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        meminfo = Path("/proc/meminfo")
        if meminfo.is_file():
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024  # the kernel writes kB, meaning KiB
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            value = int(limit.read_text().strip())  # v2 writes "max" when unlimited
        except (OSError, ValueError):
            continue
        if 0 < value < (total or value + 1):
            total = value
    return max(total, 0)
