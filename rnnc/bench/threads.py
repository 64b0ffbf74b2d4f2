"""How many threads each runtime may use during a bench (`run_bench(..., threads=N)`).

On a small shared machine this matters more than anything else: a runtime that splits each
step over every core waits at a barrier whenever any other job takes one of them, and its
times swing by 5-10x with the neighbours' load; one thread per runtime shares the machine
gracefully. So a regression gate on such a machine wants `--threads 1`. The default is every core,
the same count for every runtime, as users deploy; None leaves each runtime at its own default. The
count goes to every backend's `load` explicitly, is recorded in the report, and the gate refuses
to compare reports measured with different counts.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from rnnc import host
from rnnc.errors import UserError

DEFAULT = host.cpu_count()


@contextlib.contextmanager
def kept_torch_threads() -> Iterator[None]:
    """Put torch's process-wide intra-op count back after a bench (its runner's `load` sets it)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_force(threads: int | None) -> dict[str, Any]:
    """What the report records: the count asked for (None: each runtime's default)."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads: must be >= 1, got {threads}")
    import torch

    return {"requested": threads, "torch_intra_op": threads or torch.get_num_threads(),
            "tvm": threads, "onnxruntime": threads, "openvino": threads}
