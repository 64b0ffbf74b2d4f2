"""Stage 3: one module per backend, found by its name; all expose the functions of `base`."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from rnnc.errors import UserError
from rnnc.targets.base import TARGETS, Runner, Unsupported

__all__ = ["TARGETS", "Runner", "Unsupported", "backend", "names", "parse_backends"]


def names() -> list[str]:
    """Every backend, in table order (the reference first)."""
    found = [m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")]
    return sorted(found, key=lambda n: (_ORDER.get(n, 99), n))


_ORDER = {"torch": 0, "torchscript": 1, "onnxruntime": 2, "tvm": 3}


def backend(name: str) -> ModuleType:
    """The module of one backend."""
    if name not in names():
        raise UserError(f"unknown backend {name!r}: choose from {', '.join(names())} or all")
    return importlib.import_module(f"rnnc.targets.{name}")


def parse_backends(text: str | None) -> list[str]:
    """`all` or a comma list, checked against the backends that exist."""
    if text is None or text.strip() in ("", "all"):
        return names()
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in chosen if t not in names()]
    if bad:
        raise UserError(f"--backends: unknown backend {', '.join(map(repr, bad))}: choose from {', '.join(names())} or all")
    return list(dict.fromkeys(chosen))


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise UserError(f"--target: must be one of {', '.join(TARGETS)}, got {target!r}")
    return target
