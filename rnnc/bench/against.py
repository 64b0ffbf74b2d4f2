"""`rnnc bench NEW --against OLD`: the same-run A/B bench.

Both compiled DIRs are loaded into one process and every backend of both is measured in the
same interleaved rounds (`measure.measure_interleaved`), on the same inputs. Whatever the
machine does meanwhile (a neighbour on the shared caches, a clock change) falls on both sides
alike and cancels in their ratio, so the gate can judge the change with the samples' own noise
alone, and a change that slows every backend is seen too. This is asv's `continuous` design.

The old side's rows become a report of their own, `OUT/against/report.json`, with the same
environment, settings and calibration; both reports carry `ab: {run, role}` with one run id, so
`rnnc gate OUT/report.json` finds its baseline and knows it was measured in the same run.

What it does not compare: both sides run under this process's rnnc and runtimes, so a change to
the harness or a runtime upgrade is invisible here (README, "Which gate for which question").
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnc import pipeline
from rnnc.bench.sources import fingerprint
from rnnc.errors import UserError
from rnnc.graphs.model import Model
from rnnc.records import report as schema
from rnnc.records.manifest import MANIFEST, Manifest

AGAINST = "against"
SUFFIX = " (against)"  # the old side's name in the interleaved rounds


@dataclass
class OldSide:
    """The old compiled DIR of one model, its runners, and the half of the A/B report its rows go
    to (`report`, written to `path`)."""

    model: Model
    manifest: Manifest
    model_dir: Path
    report: dict[str, Any]
    path: Path
    runners: dict[str, Any] = field(default_factory=dict)
    not_run: dict[str, tuple[str, str]] = field(default_factory=dict)


def resolve(against: Path) -> dict[str, Path]:
    """Model name -> old compiled DIR: `against` is a compiled DIR (manifest.json), an earlier
    bench's --out folder (report.json naming each model's DIR), or a folder of compiled DIRs."""
    against = Path(against)
    if (against / MANIFEST).is_file():
        manifest = pipeline.read_manifest(against)
        return {manifest.name: against}
    if (against / "report.json").is_file():
        report = schema.load_report(against / "report.json")
        dirs = {}
        for name, info in report["models"].items():
            d = Path(info.get("dir") or "")
            d = d if d.is_absolute() else against / d
            if (d / MANIFEST).is_file():
                dirs[name] = d
        if dirs:
            return dirs
        raise UserError(f"--against {against}: its report names no compiled DIR that is still there")
    inside = sorted(d for d in against.iterdir() if (d / MANIFEST).is_file()) if against.is_dir() else []
    if inside:
        names: dict[str, Path] = {}
        for d in inside:
            name = pipeline.read_manifest(d).name
            if name in names:
                raise UserError(f"--against {against}: two builds of model {name!r} ({names[name].name}, {d.name}): "
                                f"name the one to compare with")
            names[name] = d
        return names
    raise UserError(f"--against {against}: not a compiled DIR (no manifest.json), a folder of them, nor a "
                    f"bench folder (no report.json)")


def open_old(dirs: dict[str, Path], model: Model, target: str, report: dict[str, Any], path: Path) -> OldSide:
    """The old side of `model`, checked to be the same model, its rows going to `report`."""
    old_dir = dirs.get(model.name)
    if old_dir is None:
        raise UserError(f"--against: no build of model {model.name!r} there (it holds {', '.join(sorted(dirs))})")
    manifest, old_model = pipeline.open_dir(old_dir)
    pipeline.check_target(old_dir, manifest, target)
    mine, theirs = fingerprint(model), fingerprint(old_model)
    if mine != theirs:
        raise UserError(f"--against {old_dir}: model {model.name!r} differs from the one benched "
                        f"(fingerprint {theirs} vs {mine}): an A/B bench compares two builds of one model")
    return OldSide(old_model, manifest, old_dir, report, path)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def half_report(report: dict[str, Any], run: str) -> dict[str, Any]:
    """The old side's report: the new one's environment, settings and calibration, its own rows."""
    return {**report, "models": {}, "rows": [], "ab": {"run": run, "role": AGAINST}}  # calibration: one dict
