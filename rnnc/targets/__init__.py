"""Stage 3, artifacts: one module per backend, found by its name; each fills in the contract of
`base` (ORDER, available, runnable, build, load)."""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from rnnc.errors import UserError
from rnnc.targets.base import TARGETS, Runner

__all__ = ["TARGETS", "Runner", "backend", "check_target", "names", "parse_backends"]


@cache
def names() -> tuple[str, ...]:
    """Every backend, in table order (each module's ORDER: the reference first)."""
    found = [m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")]
    return tuple(sorted(found, key=lambda n: (importlib.import_module(f"{__name__}.{n}").ORDER, n)))


def backend(name: str) -> ModuleType:
    """The module of one backend."""
    if name not in names():
        raise UserError(f"unknown backend {name!r}: choose from {', '.join(names())} or all")
    return importlib.import_module(f"{__name__}.{name}")


def parse_backends(text: str | None) -> list[str]:
    """`all` or a comma list, checked against the backends that exist."""
    if text is None or text.strip() in ("", "all"):
        return list(names())
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    if not chosen:
        raise UserError("--backends: no backend selected")
    bad = [t for t in chosen if t not in names()]
    if bad:
        raise UserError(f"--backends: unknown backend {', '.join(map(repr, bad))}: choose from {', '.join(names())} or all")
    return list(dict.fromkeys(chosen))


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise UserError(f"--target: must be one of {', '.join(TARGETS)}, got {target!r}")
    return target
