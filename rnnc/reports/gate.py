"""`rnnc gate`: compare a report with a baseline row by row; exit 1 on a real regression.

A row fails only when its slowdown is past `max_regression` beyond what its own samples' noise
explains: the lower end of the 95% bootstrap interval of the ratio of medians (new / baseline)
must be above 1 + max_regression (`stats.compare`). A Mann-Whitney p-value is shown beside it.
A backend that ran in the baseline and fails now fails the gate too; one that is missing or
skipped now is listed but does not fail it (CI machines differ in what they have installed).

`--normalize` divides every sample by its own report's calibration median (a fixed matrix
product measured in the same run), for baselines taken on another machine; the calibration's own
noise is resampled into the interval.

`common_mode` (same machine, shared host): backends of one shape are measured interleaved, so a
drift of the machine between the two runs moves them all alike; each backend is then judged on
its ratio over the median ratio of the three or more backends of its shape (`stats.
compare_common_mode`). It cannot see a change that slows every backend alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnc import stats
from rnnc.errors import UserError
from rnnc.reports import schema
from rnnc.reports.tables import text_table

FAILING = ("FAIL", "BROKEN")


@dataclass(frozen=True)
class RowChange:
    key: schema.RowKey
    base: float | None  # baseline median (ms, or calibration units when normalised)
    new: float | None
    cmp: stats.Comparison | None
    verdict: str  # FAIL BROKEN slower faster same ? missing new "not run"
    note: str = ""
    cv: float | None = None  # the new row's coefficient of variation


def gate(report_path: Path, baseline_path: Path, max_regression: float, normalize: bool,
         common_mode: bool = False) -> tuple[int, str]:
    """Exit code (0 pass, 1 a regression) and the table of every row's change.

    `common_mode` judges each backend against the drift it shares with the backends measured
    interleaved with it (`stats.compare_common_mode`), for same-machine gates on a shared host.
    """
    if not max_regression > 0:
        raise UserError(f"--max-regression: must be > 0, got {max_regression}")
    if normalize and common_mode:
        raise UserError("--normalize and the common-mode comparison are alternatives: choose one")
    report, baseline = schema.load(Path(report_path)), schema.load(Path(baseline_path))
    changes = compare_reports(baseline, report, max_regression, normalize, common_mode)
    if not any(c.base is not None and c.new is not None for c in changes):
        raise UserError(f"{report_path} and {baseline_path} have no timed row in common (model, backend, "
                        f"batch size, sequence length): nothing to compare")
    code = 1 if any(c.verdict in FAILING for c in changes) else 0
    return code, format_changes(changes, max_regression, normalize, code, common_mode)


def check_comparable(baseline: dict[str, Any], report: dict[str, Any], normalize: bool) -> None:
    """Raise UserError (exit 2) for reports that cannot be compared row by row."""
    if baseline.get("kind") != report.get("kind"):
        raise UserError(f"reports of different schema: a {report.get('kind')} report against a "
                        f"{baseline.get('kind')} baseline")
    if baseline["target"] != report["target"]:
        raise UserError(f"reports of different targets: {report['target']} against a {baseline['target']} "
                        f"baseline")
    threads = [(r.get("settings") or {}).get("threads") or "default" for r in (report, baseline)]
    if threads[0] != threads[1]:
        raise UserError(f"reports measured with different thread counts: {threads[0]} against {threads[1]} "
                        f"in the baseline (rnnc bench --threads)")
    common = [m for m in report["models"] if m in baseline["models"]]
    if not common:
        mine, theirs = ", ".join(report["models"]) or "-", ", ".join(baseline["models"]) or "-"
        raise UserError(f"reports of different specs: no model in common (report: {mine}; baseline: {theirs})")
    for name in common:
        a, b = report["models"][name].get("fingerprint"), baseline["models"][name].get("fingerprint")
        if a and b and a != b:
            raise UserError(f"reports of different specs: model {name!r} changed (fingerprint {a} vs {b} in the "
                            f"baseline)")
    if normalize:
        workloads = {r["calibration"].get("workload") for r in (report, baseline)}
        if len(workloads) > 1:
            shown = " vs ".join(map(str, workloads))
            raise UserError(f"--normalize: the reports' calibration workloads differ ({shown})")
        for which, r in (("report", report), ("baseline", baseline)):
            if not r["calibration"].get("samples_ms"):
                raise UserError(f"--normalize: the {which} has no calibration samples")


def compare_reports(
    baseline: dict[str, Any], report: dict[str, Any], max_regression: float, normalize: bool,
    common_mode: bool = False,
) -> list[RowChange]:
    check_comparable(baseline, report, normalize)
    base_rows = {schema.row_key(r): r for r in baseline["rows"]}
    new_rows = {schema.row_key(r): r for r in report["rows"]}
    scale_b = _scale(baseline, normalize)
    scale_n = _scale(report, normalize)
    units = ((baseline["calibration"]["samples_ms"], report["calibration"]["samples_ms"]) if normalize
             else (None, None))
    keys = list(base_rows) + [k for k in new_rows if k not in base_rows]
    models = set(report["models"])
    shared = _common_mode(base_rows, new_rows, max_regression) if common_mode else {}
    changes = []
    for key in keys:
        b, n = base_rows.get(key), new_rows.get(key)
        if key[0] not in models:
            continue  # a model the new report did not bench at all: not part of this comparison
        change = _change(key, b, n, scale_b, scale_n, max_regression, units)
        if key in shared:
            cmp, drift = shared[key]
            verdict = {"fail": "FAIL", "unknown": "?"}.get(cmp.verdict, cmp.verdict)
            change = RowChange(key, change.base, change.new, cmp, verdict, f"common drift {drift - 1:+.1%}",
                               change.cv)
        elif common_mode and change.cmp is not None:
            change = RowChange(key, change.base, change.new, change.cmp, change.verdict,
                               "fewer than 3 backends: not corrected for drift", change.cv)
        changes.append(change)
    return changes


def _common_mode(base_rows: dict[schema.RowKey, Any], new_rows: dict[schema.RowKey, Any],
                 max_regression: float) -> dict[schema.RowKey, tuple[stats.Comparison, float]]:
    """Common-mode comparisons of every shape where three or more backends ran in both reports."""
    groups: dict[tuple[str, int, int], list[schema.RowKey]] = {}
    for key, b in base_rows.items():
        n = new_rows.get(key)
        if b["status"] == "ok" and n is not None and n["status"] == "ok" and b.get("has_samples", True) \
                and n.get("has_samples", True):
            groups.setdefault((key[0], key[2], key[3]), []).append(key)
    out = {}
    for keys in groups.values():
        if len(keys) < 3:
            continue
        cmps, drift = stats.compare_common_mode({k[1]: base_rows[k]["samples_ms"] for k in keys},
                                                {k[1]: new_rows[k]["samples_ms"] for k in keys}, max_regression)
        out.update({k: (cmps[k[1]], drift) for k in keys})
    return out


def _scale(report: dict[str, Any], normalize: bool) -> float:
    if not normalize:
        return 1.0
    return stats.median(report["calibration"]["samples_ms"])


def _change(key: schema.RowKey, b: dict[str, Any] | None, n: dict[str, Any] | None, scale_b: float,
            scale_n: float, max_regression: float,
            units: tuple[list[float] | None, list[float] | None]) -> RowChange:
    b_ok, n_ok = b is not None and b["status"] == "ok", n is not None and n["status"] == "ok"
    base = b["median_ms"] / scale_b if b_ok else None
    new = n["median_ms"] / scale_n if n_ok else None
    if b_ok and n_ok:
        cv = n.get("cv")
        if b.get("has_samples", True) and n.get("has_samples", True):
            cmp = stats.compare(b["samples_ms"], n["samples_ms"], max_regression, base_unit=units[0],
                                new_unit=units[1])
            verdict = {"fail": "FAIL", "unknown": "?"}.get(cmp.verdict, cmp.verdict)
            note = "too few samples to tell" if cmp.verdict == "unknown" else ""
            return RowChange(key, base, new, cmp, verdict, note, cv)
        quart = lambda r, s: (r.get("q1_ms", r["median_ms"]) / s, r["median_ms"] / s,  # noqa: E731
                              r.get("q3_ms", r["median_ms"]) / s)
        verdict = stats.compare_quartiles(quart(b, scale_b), quart(n, scale_n), max_regression)
        return RowChange(key, base, new, None, "FAIL" if verdict == "fail" else verdict,
                         "no samples saved: judged on quartiles", cv)
    if b_ok and n is not None and n["status"] == "failed":
        return RowChange(key, base, None, None, "BROKEN", n.get("reason") or "failed")
    if b_ok:
        return RowChange(key, base, None, None, "missing" if n is None else "not run",
                         "not in this report" if n is None else (n.get("reason") or n["status"]))
    if n_ok:
        return RowChange(key, None, new, None, "new", "not in the baseline" if b is None else
                         f"{b['status']} in the baseline", n.get("cv"))
    why = (n or b or {}).get("reason") or "did not run"
    return RowChange(key, None, None, None, "not run", why)


def format_changes(changes: list[RowChange], max_regression: float, normalize: bool, code: int,
                   common_mode: bool = False) -> str:
    unit = "x cal" if normalize else "ms"
    header = ("model", "backend", "batch", "seq", f"base {unit}", f"new {unit}", "change", "95% CI", "p(slower)",
              "cv", "verdict", "note")
    rows = []
    for c in changes:
        cmp = c.cmp
        ci = f"[{cmp.ci_low - 1:+.1%}, {cmp.ci_high - 1:+.1%}]" if cmp and not math.isnan(cmp.ci_low) else "-"
        change = f"{cmp.ratio - 1:+.1%}" if cmp else f"{c.new / c.base - 1:+.1%}" if c.base and c.new else "-"
        rows.append((c.key[0], c.key[1], str(c.key[2]), str(c.key[3]), _num(c.base), _num(c.new), change, ci,
                     f"{cmp.p_slower:.3f}" if cmp and not math.isnan(cmp.p_slower) else "-",
                     f"{c.cv:.1%}" if c.cv is not None else "-", c.verdict, c.note))
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    failed = [c for c in changes if c.verdict in FAILING]
    verdict = (f"gate FAILED: {len(failed)} of {len(changes)} rows regressed past {max_regression:.0%}"
               if code else f"gate passed: no row slower than {max_regression:.0%} beyond its noise")
    how = (" (calibration-normalised)" if normalize else
           " (relative to the drift shared by each shape's backends)" if common_mode else "")
    return "\n".join([text_table(header, rows, right=range(2, 10)), "", f"{len(changes)} rows: {summary}",
                      verdict + how])


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if v < 100 else f"{v:.1f}"
