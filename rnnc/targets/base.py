"""The contract every backend module in `rnnc/targets/` fills in.

A backend is one module named after it, exposing:

    ORDER: int                                   # where it stands in tables (torch first)
    available(target: str) -> str | None         # None when it can run, else why not
    build(model, out_dir, target, options) -> list[str]   # artifacts written, relative to out_dir
    load(out_dir, manifest, target) -> Runner

`build` raises `Unsupported` for a model it cannot take (the backend is then `skipped` with the
reason); any other exception marks it `failed`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from rnnc.errors import Unsupported, UserError

Arrays = dict[str, np.ndarray]
TARGETS = ("cpu", "cuda")



class Runner:
    """Named arrays in, named arrays out. Subclasses implement `_run` (and may override `bind`)."""

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str], input_dtypes: Sequence[str]):
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.input_dtypes = dict(zip(self.input_names, input_dtypes))

    def __call__(self, **arrays: np.ndarray) -> Arrays:
        return self._run(self.check_inputs(arrays))

    def bind(self, **arrays: np.ndarray) -> Callable[[], object]:
        """A call with its inputs already converted, for timing the model and not the conversion."""
        checked = self.check_inputs(arrays)
        return lambda: self._run(checked)

    def check_inputs(self, arrays: dict[str, np.ndarray]) -> Arrays:
        missing = [n for n in self.input_names if n not in arrays]
        unknown = [n for n in arrays if n not in self.input_dtypes]
        if missing or unknown:
            raise UserError(
                f"inputs {sorted(arrays)} do not match the model's inputs {self.input_names}"
                + (f": missing {missing}" if missing else "")
                + (f": unknown {unknown}" if unknown else "")
            )
        checked = {}
        for name, dtype in self.input_dtypes.items():
            a = np.asarray(arrays[name])
            want = np.dtype(dtype)
            if a.dtype != want:
                if want.kind in "iu" and a.dtype.kind not in "iu":
                    raise UserError(f"input {name!r}: expected integer ids ({dtype}), got {a.dtype}")
                a = a.astype(want)
            checked[name] = np.ascontiguousarray(a)
        return checked

    def _run(self, arrays: Arrays) -> Arrays:
        raise NotImplementedError
