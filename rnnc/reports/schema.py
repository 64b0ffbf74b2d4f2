"""The report format: its version, validation, atomic writing, and reading foreign results.

`report.json` carries `format` and `version`; a file that is missing, not JSON, of another
format or of a version this rnnc cannot read is a `UserError` (one line, exit 2), never a
traceback. pytest-benchmark's JSON (`pytest bench/ --benchmark-json=FILE`) is read too and
mapped onto the same rows, so the gate and the renderer take either.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rnnc.errors import UserError

FORMAT = "rnnc-bench-report"
VERSION = 1
RowKey = tuple[str, str, int, int]  # model, backend, batch size, sequence length

TIMED_KEYS = ("samples_ms", "median_ms", "iqr_ms", "p90_ms", "p99_ms", "sequences_per_s", "tokens_per_s")
STATUSES = ("ok", "skipped", "failed")


def row_key(row: dict[str, Any]) -> RowKey:
    return (str(row["model"]), str(row["backend"]), int(row["batch_size"]), int(row["seq_len"]))


def new_report(target: str, environment: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "rnnc",
        "target": target,
        "environment": environment,
        "settings": settings,
        "calibration": {"workload": None, "samples_ms": []},
        "models": {},
        "rows": [],
        "finished": False,
    }


def validate(report: Any) -> list[str]:
    """Every problem with a report's structure, one line each (empty when it is valid)."""
    if not isinstance(report, dict):
        return ["not a JSON object"]
    problems = []
    if report.get("format") != FORMAT:
        return [f"not an rnnc bench report (format {report.get('format')!r}, expected {FORMAT!r})"]
    if report.get("version") != VERSION:
        return [f"report version {report.get('version')!r} is not one this rnnc reads (version {VERSION})"]
    for key, kind in (("models", dict), ("rows", list), ("calibration", dict), ("target", str)):
        if not isinstance(report.get(key), kind):
            problems.append(f"{key}: missing or not a {kind.__name__}")
    if problems:
        return problems
    for i, row in enumerate(report["rows"]):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            problems.append(f"{where}: not an object")
            continue
        missing = [k for k in ("model", "backend", "batch_size", "seq_len", "status") if k not in row]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        if row["status"] not in STATUSES:
            problems.append(f"{where}: status {row['status']!r} is not one of {', '.join(STATUSES)}")
        elif row["status"] == "ok":
            absent = [k for k in TIMED_KEYS if k not in row]
            if absent:
                problems.append(f"{where}: a row that ran needs {', '.join(absent)}")
            elif not row["samples_ms"] or not all(_finite(v) and v > 0 for v in row["samples_ms"]):
                problems.append(f"{where}: samples_ms must be a non-empty list of positive numbers")
        elif not row.get("reason"):
            problems.append(f"{where}: a row that did not run needs a reason")
        if row["model"] not in report["models"]:
            problems.append(f"{where}: model {row['model']!r} is not in models")
    return problems


def load(path: Path) -> dict[str, Any]:
    """An rnnc report or a pytest-benchmark JSON, as an rnnc-shaped report (validated)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such report file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and "benchmarks" in data and "format" not in data:
        data = from_pytest_benchmark(data, path)
    problems = validate(data)
    if problems:
        raise UserError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return data


def write_atomic(path: Path, report: dict[str, Any]) -> None:
    """Write through a temporary file and a rename, so a killed run never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def from_pytest_benchmark(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Map pytest-benchmark's JSON onto report rows. Benchmarks from `bench/test_suite.py` carry
    their row key in `extra_info`; others become model "pytest", keyed by their full name.
    Samples are present when the JSON came from `--benchmark-json` (pytest-benchmark keeps every
    timing there); without them the gate falls back to quartiles."""
    if not isinstance(data.get("benchmarks"), list):
        raise UserError(f"{path}: not a pytest-benchmark JSON (no list of benchmarks)")
    machine = data.get("machine_info") or {}
    report = new_report(str((data.get("benchmarks") or [{}])[0].get("extra_info", {}).get("target", "cpu")),
                        {"cpu": {"model": (machine.get("cpu") or {}).get("brand_raw"), "cores":
                                 (machine.get("cpu") or {}).get("count")},
                         "versions": {"python": machine.get("python_version"),
                                      "pytest-benchmark": data.get("version")},
                         "git": (data.get("commit_info") or {}).get("id")},
                        {"source": "pytest-benchmark", "threads": next(
                            (b.get("extra_info", {}).get("threads") for b in data["benchmarks"]
                             if isinstance(b, dict) and "threads" in b.get("extra_info", {})), None)})
    report["kind"] = "pytest-benchmark"
    report["finished"] = True
    for bench in data["benchmarks"]:
        try:
            stats, info = bench["stats"], bench.get("extra_info") or {}
            samples = [v * 1000 for v in stats.get("data") or []]
            if info.get("kind") == "calibration":
                report["calibration"] = {"workload": info.get("workload"), "samples_ms": samples,
                                         "median_ms": stats["median"] * 1000}
                continue
            model = str(info.get("model", "pytest"))
            fingerprint = str(info.get("fingerprint", ""))
            report["models"].setdefault(model, {"fingerprint": fingerprint, "backends": {}})
            batch, seq = int(info.get("batch_size", 1)), int(info.get("seq_len", 1))
            row = {
                "model": model, "backend": str(info.get("backend", bench["fullname"])),
                "batch_size": batch, "seq_len": seq, "status": "ok",
                "samples_ms": samples or [stats["median"] * 1000],
                "median_ms": stats["median"] * 1000, "iqr_ms": stats["iqr"] * 1000,
                "q1_ms": stats["q1"] * 1000, "q3_ms": stats["q3"] * 1000,
                "p90_ms": _pct(samples, 90, stats["max"] * 1000), "p99_ms": _pct(samples, 99, stats["max"] * 1000),
                "cv": stats["stddev"] / stats["mean"] if stats["mean"] else 0.0,
                "sequences_per_s": batch / stats["median"], "tokens_per_s": batch * seq / stats["median"],
                "has_samples": bool(samples),
            }
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            raise UserError(f"{path}: benchmark {bench.get('fullname', '?')!r} is malformed ({err})") from None
        report["rows"].append(row)
    return report


def _pct(samples: list[float], q: float, default: float) -> float:
    if not samples:
        return default
    from rnnc.stats import percentile

    return percentile(samples, q)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
