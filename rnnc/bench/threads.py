"""How many threads each runtime may use during a bench (`run_bench(..., threads=N)`).

On a small shared machine this matters more than anything else: a runtime that splits each
step over every core waits at a barrier whenever any other job takes one of them, and its
times swing by 5-10x with the neighbours' load; one thread per runtime shares the machine
gracefully. So a regression gate on such a machine wants `--threads 1`. The default is every core,
the same count for every runtime, as users deploy; None leaves each runtime at its own default. The
count is recorded in the report and the gate refuses to compare reports measured with different counts.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any, Callable, Iterator


DEFAULT = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def limited(threads: int | None) -> Iterator[dict[str, Any]]:
    """`configure` for the duration of a bench; torch's count and TVM_NUM_THREADS are put back
    after it (a TVM pool already started keeps its size until the tvm backend loads again)."""
    import torch

    before, env = torch.get_num_threads(), os.environ.get("TVM_NUM_THREADS")
    try:
        yield configure(threads)
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = env


def configure(threads: int | None) -> dict[str, Any]:
    """Set the process-wide counts before any runner loads; returns what is in force."""
    import torch

    if threads is not None:
        if threads < 1:
            from rnnc.errors import UserError

            raise UserError(f"--threads: must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read by the tvm backend when it loads
    return {"requested": threads, "torch_intra_op": torch.get_num_threads(),
            "tvm": os.environ.get("TVM_NUM_THREADS")}


def load(load_fn: Callable[..., Any], backend: str, threads: int | None, *args: Any) -> Any:
    """A backend's runner, with its thread count limited through a `threads` parameter of its
    `load` where it has one (onnxruntime: a session option); torch and TVM read the process-wide
    counts that `configure` set."""
    if threads is not None and "threads" in inspect.signature(load_fn).parameters:
        return load_fn(*args, threads=threads)
    return load_fn(*args)
