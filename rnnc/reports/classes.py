"""A fleet report (`rnnc bench --cluster`) seen one machine class at a time.

Rows of several classes share one report.json; each class's view is a one-machine report of its
own (its rows, its nodes' environment and calibration, its builds), so that the tables and plots
of a one-machine report serve it unchanged, and a class is never drawn or ranked beside another
except in the plot made to compare them. Pure functions over the report's data.
"""
from __future__ import annotations

from typing import Any

from rnnc import stats


def machines(report: dict[str, Any]) -> list[str]:
    """The classes that have rows, in the report's order; [] for a one-machine report."""
    have = {r.get("machine") for r in report.get("rows", [])} - {None}
    listed = list((report.get("cluster") or {}).get("classes") or {})
    return [c for c in listed if c in have] + sorted(have - set(listed))


def of_class(report: dict[str, Any], machine: str) -> dict[str, Any]:
    """The report as one class's: its rows, the environment of its first node (which, being of
    one class, stands for the others), its nodes' calibration samples together, its builds."""
    section = report.get("cluster") or {}
    entry = (section.get("classes") or {}).get(machine) or {}
    nodes = {name: n for name, n in (section.get("nodes") or {}).items() if n.get("machine") == machine}
    first = next(iter(nodes.values()), {})
    samples = [v for n in nodes.values() for v in (n.get("calibration") or {}).get("samples_ms", [])]
    calibration = {"workload": (report.get("calibration") or {}).get("workload"), "samples_ms": samples}
    if samples:
        calibration.update(stats.summarize(samples))
    builds = entry.get("models") or {}
    models = {name: dict(m, **(builds.get(name) or {})) for name, m in report["models"].items()}
    return dict(report, rows=[r for r in report["rows"] if r.get("machine") == machine],
                environment=first.get("environment") or report.get("environment") or {},
                calibration=calibration, models=models, nodes=list(nodes))


def describe(report: dict[str, Any], machine: str) -> str:
    """One line on a class: what it is and which nodes ran its rows."""
    entry = ((report.get("cluster") or {}).get("classes") or {}).get(machine) or {}
    nodes = sorted({r["node"] for r in report["rows"] if r.get("machine") == machine and r.get("node")})
    what = ", ".join(f"{k} {entry[k]}" for k in ("cpu", "isa", "gpu") if entry.get(k))
    return (f"Machine class {machine}" + (f" ({what})" if what else "") +
            (f"; rows measured on {', '.join(nodes)}" if nodes else "") + ".")
