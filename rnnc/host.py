"""What machine and libraries a result came from: recorded in manifests and reports.

A fleet sweep (`rnnc bench --cluster`) places its jobs by `MachineClass`: what a node is (CPU
model, the instruction sets our kernels care about, GPU model), carried as Ray node labels that
`rnnc node` sets when the node joins, so that rows measured on like machines are compared only
with each other.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import platform
import re
import socket
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

MiB = 2**20
FALLBACK_L2, FALLBACK_L3 = 1 * MiB, 32 * MiB
SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
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


GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def gpu() -> str | None:
    """The CUDA device's name, or None. torch (seconds to import) is asked only where a GPU driver
    is there to find one: NVIDIA's or ROCm's device files (a fleet's driver needs the machine's
    class, not torch)."""
    if not any(os.path.exists(p) for p in GPU_DRIVER_FILES):
        return None
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


LABEL = "rnnc."  # the prefix of the Ray node labels rnnc sets and reads
CLASS_KEYS = ("cpu", "isa", "gpu", "class")  # what `--on key=pattern` may name
_ISA_TAGS = (("avx2", "avx2"), ("avx512f", "avx512"), ("avx512_vnni", "vnni"), ("avx512_bf16", "bf16"),
             ("amx_tile", "amx"))
_MAX_LABEL = 63  # Ray node labels follow Kubernetes': at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends


def label_value(text: str) -> str:
    """`text` as a Ray label value: "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz" becomes
    "Intel-Xeon-Platinum-8481C-CPU-2.70GHz" (trademarks dropped, every other run of characters
    a label cannot hold one dash); a name too long keeps its start and a hash of the whole."""
    slug = _spell(text).strip("-_.")
    if len(slug) > _MAX_LABEL:
        digest = hashlib.sha256(slug.encode()).hexdigest()[:8]
        slug = slug[:_MAX_LABEL - 9].rstrip("-_.") + "-" + digest
    return slug or "unknown"


@dataclass(frozen=True)
class MachineClass:
    """What a node is, as its labels say: `cpu` and `gpu` label-safe model names ("none": no GPU),
    `isa` the extensions that change what our kernels do (avx2, avx512, vnni, bf16, amx; "none"),
    and `name`, the class's id: the operator's own (`rnnc node --class skylake`) or one made of
    the other three. Rows and histories name a class by its `name`."""

    cpu: str
    isa: str
    gpu: str
    name: str

    @staticmethod
    def of(cpu_model: str, isa: list[str], gpu_model: str | None, name: str | None = None) -> MachineClass:
        tags = "-".join(tag for flag, tag in _ISA_TAGS if flag in isa) or "none"
        cpu, gpu = label_value(cpu_model), label_value(gpu_model) if gpu_model else "none"
        made = "_".join([cpu, tags] + ([gpu] if gpu != "none" else []))
        return MachineClass(cpu, tags, gpu, label_value(name) if name else label_value(made))

    def labels(self) -> dict[str, str]:
        """The Ray node labels of a node of this class (`ray start --labels`)."""
        return {f"{LABEL}{key}": value for key, value in
                (("class", self.name), ("cpu", self.cpu), ("isa", self.isa), ("gpu", self.gpu))}

    @staticmethod
    def from_labels(labels: dict[str, str]) -> MachineClass | None:
        """The class a node's labels give; None for a node that rnnc did not label."""
        values = [labels.get(f"{LABEL}{key}") for key in ("cpu", "isa", "gpu", "class")]
        return None if any(v is None for v in values) else MachineClass(*values)

    def field(self, key: str) -> str:
        return self.name if key == "class" else getattr(self, key)

    def matches(self, patterns: dict[str, list[str]]) -> bool:
        """Whether every key's patterns (alternatives) match: fnmatch, case-insensitive, after the
        same spelling a label has ("Xeon(R) Gold*" is "Xeon-Gold*"); a pattern without a wildcard
        matches anywhere in the value (`gpu=H100` matches "NVIDIA-H100-80GB-HBM3")."""
        return all(any(_match(self.field(key), p) for p in alternatives) for key, alternatives in patterns.items())

    def describe(self) -> str:
        return f"cpu={self.cpu}, isa={self.isa}, gpu={self.gpu}"


def _match(value: str, pattern: str) -> bool:
    parts = re.split(r"([*?\[\]])", pattern)
    spelled = "".join(p if p in "*?[]" and p else _spell(p) for p in parts)
    if not any(c in spelled for c in "*?["):
        spelled = f"*{spelled}*"
    return fnmatch.fnmatchcase(value.lower(), spelled.lower())


def _spell(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", re.sub(r"\((R|TM|C)\)", "", text, flags=re.I))


def machine_class(name: str | None = None) -> MachineClass:
    """This machine's class (`name`: the operator's own id for it)."""
    found = cpu()
    return MachineClass.of(str(found["model"]), list(found["isa"]), gpu(), name)


def node_name() -> str:
    """How rows name a node by default: its host name."""
    return label_value(socket.gethostname())


# ---------------------------------------------------------------------------------------------
# caches: the roof (`rnnc.bench.roof`) and the kernels' step order (`rnnc.compiler.tvm.target`) read them


@dataclass(frozen=True)
class Caches:
    """One L2 and the CPUs sharing it; the L3 (None: none found); where the sizes came from."""

    l2_bytes: int
    l2_cpus: int
    l3_bytes: int | None
    source: str


def caches(root: Path = SYSFS, lscpu: Callable[[], str] | None = None) -> Caches:
    """The L2 and L3 sizes of cpu0: sysfs, else lscpu, else the fallback figures."""
    found: dict[int, tuple[int, int]] = {}
    for index in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            level, kind = int((index / "level").read_text()), (index / "type").read_text().strip()
            size = _size((index / "size").read_text())
            cpus = _count_cpus((index / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Unified", "Data") and level in (2, 3):
            found[level] = (size, cpus)
    if 2 in found:
        return Caches(found[2][0], found[2][1], found.get(3, (None, 0))[0], "sysfs")
    sizes = _lscpu_sizes((lscpu or _run_lscpu)())
    if "L2" in sizes:
        return Caches(sizes["L2"], 1, sizes.get("L3"), "lscpu")
    return Caches(FALLBACK_L2, 1, FALLBACK_L3, "fallback")


def _size(text: str) -> int:
    """sysfs's "2048K", "105M" as bytes."""
    text = text.strip()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def _count_cpus(text: str) -> int:
    """CPUs in a list such as "0-3,8"."""
    count = 0
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def _run_lscpu() -> str:
    try:
        return subprocess.run(["lscpu", "-B", "-C=NAME,ONE-SIZE"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _lscpu_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("L2", "L3") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes
