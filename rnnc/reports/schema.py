"""Reading results: rnnc's own report.json (`rnnc.records.report`) or pytest-benchmark's JSON.

pytest-benchmark's JSON (`pytest bench/ --benchmark-json=FILE`) is mapped onto the same rows, so the
gate and the renderer take either. A file that is missing, not JSON, of another format or of a
version this rnnc cannot read is a `UserError` (one line, exit 2), never a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnc.stats import percentile
from rnnc.errors import UserError
from rnnc.records.report import RowKey, checked, key_label, new_report, read_json, row_key, upgrade

__all__ = ["RowKey", "from_pytest_benchmark", "key_label", "load", "row_key"]


def load(path: Path) -> dict[str, Any]:
    """An rnnc report or a pytest-benchmark JSON, as an rnnc-shaped report (upgraded, validated)."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and "benchmarks" in data and "format" not in data:
        data = from_pytest_benchmark(data, path)
    return checked(upgrade(data), path)


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
    return percentile(samples, q)

