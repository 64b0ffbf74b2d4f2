"""Stage 3, artifacts: one module per backend, found by its name; each fills in the contract of
`base` (ORDER, PRECISIONS, available, runnable, build, load).

A backend as the user names it is `NAME` or `NAME:PRECISION` (SPEC section 2): `tvm:int8` is the
module `tvm` built at int8, its own manifest entry and bench row. `NAME:fp32` is `NAME`.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from rnnc.errors import UserError
from rnnc.targets.base import DEFAULT_PRECISION, TARGETS, Runner

__all__ = ["DEFAULT_PRECISION", "TARGETS", "Runner", "backend", "build", "check_precision", "check_target", "declared",
           "load", "names", "parse_backends", "precision_of", "sort_key", "split"]


@cache
def names() -> tuple[str, ...]:
    """Every backend module, in table order (each module's ORDER: the reference first)."""
    found = [m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")]
    return tuple(sorted(found, key=lambda n: (declared(n)["ORDER"], n)))


@cache
def declared(module: str) -> dict[str, Any]:
    """A backend module's ORDER and PRECISIONS, read from its source, not by importing it: a module
    imports its runtime (torch, onnx, tvm: seconds), which checking `--backends` does not need, nor
    a fleet's driver, which measures nothing. The constants are literals (tests check they agree)."""
    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id in ("ORDER", "PRECISIONS")}


def check_precision(name: str) -> None:
    """A `UserError` unless backend `name` exists and builds the precision it names."""
    module, precision = split(name)
    if module not in names():
        raise UserError(f"unknown backend {name!r}: choose from {', '.join(names())} or all")
    precisions = declared(module)["PRECISIONS"]
    if precision not in precisions:
        raise UserError(f"backend {module!r} has no precision {precision!r}: it runs "
                        f"{', '.join(f'{module}:{p}' for p in precisions)}")


def split(name: str) -> tuple[str, str]:
    """`tvm:int8` -> ("tvm", "int8"); `tvm` -> ("tvm", "fp32")."""
    module, _, precision = name.partition(":")
    return module, precision or DEFAULT_PRECISION


def precision_of(name: str) -> str:
    """The precision a backend name asks for (`fp32` where it names none)."""
    return split(name)[1]


def backend(name: str) -> ModuleType:
    """The module of one backend (`tvm:int8`: the module `tvm`)."""
    check_precision(name)
    return importlib.import_module(f"{__name__}.{split(name)[0]}")


def canonical(name: str) -> str:
    """The name a backend is recorded under: `tvm:fp32` is `tvm`."""
    module, precision = split(name.strip())
    return module if precision == DEFAULT_PRECISION else f"{module}:{precision}"


def parse_backends(text: str | None) -> list[str]:
    """`all` (every backend at fp32) or a comma list of NAME[:PRECISION], checked against what exists."""
    if text is None or text.strip() in ("", "all"):
        return list(names())
    chosen = [canonical(t) for t in text.split(",") if t.strip()]
    if not chosen:
        raise UserError("--backends: no backend selected")
    bad = [t for t in chosen if split(t)[0] not in names()]
    if bad:
        raise UserError(f"--backends: unknown backend {', '.join(map(repr, bad))}: choose from {', '.join(names())} or all"
                        " (a precision after a colon: tvm:int8)")
    for t in chosen:
        try:
            check_precision(t)
        except UserError as err:
            raise UserError(f"--backends: {err}") from None
    return list(dict.fromkeys(chosen))


def build(name: str, model: Any, out_dir: Path, target: str, options: dict[str, Any]) -> list[str]:
    """Backend `name`'s artifacts for `model` at the precision its name says."""
    return backend(name).build(model, out_dir, target, options, precision_of(name))


def load(name: str, out_dir: Path, manifest: Any, target: str, threads: int | None) -> Runner:
    """Backend `name`'s runner over its artifacts in DIR, at the precision its name says."""
    return backend(name).load(Path(out_dir), manifest, target, threads, precision_of(name))


def sort_key(name: str) -> tuple[int, int, str]:
    """Where a backend stands in tables: by module (the reference first), then by precision."""
    module, precision = split(name)
    order = names().index(module) if module in names() else len(names())
    ladder = ("fp32", "fp16", "bf16", "int8")
    return order, ladder.index(precision) if precision in ladder else len(ladder), name


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise UserError(f"--target: must be one of {', '.join(TARGETS)}, got {target!r}")
    return target
