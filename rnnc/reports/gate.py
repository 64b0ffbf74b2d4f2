"""`rnnc gate`: judge a report row by row; exit 1 on a real regression, 2 when nothing compares.

A row fails only when it is slower than its baseline by more than `max_regression` beyond what
noise explains: the lower end of the 95% interval of its ratio (new / baseline) is above
1 + max_regression. What "noise" covers depends on the mode, and the modes exist because this
machine drifts: between two runs minutes apart every backend measured in the same window of time
moved 10-28% together, while the calibration matmul measured in the same rounds moved 1%
(bench/README.md, "Stability"). So:

- `ab` (same-run A/B, `rnnc bench NEW --against OLD`): both builds were measured in the same
  interleaved rounds, so the drift fell on both sides alike; each row is judged on its samples
  (bootstrap of the ratio of medians). Sees every change of the builds, one backend's or all.
- `common` (a baseline from an earlier run): each backend's ratio over the median ratio of the
  three or more backends measured interleaved on its shape (`stats.common_mode`). The
  drift cancels, and so does a change that slows every backend alike, unless that shared change is
  past `DRIFT_ALLOWANCE` (30%: the largest shared drift measured between reruns here was +20%)
  on top of the threshold: a 2x slower run still fails. Shapes with fewer backends fall back to
  `plain`, and say so.
- `plain`: the samples' own noise only; right where runs do not drift (a quiet, dedicated runner).
- `normalized`: every time over its report's calibration median, the calibration's noise resampled
  into the interval; for baselines from another machine.
- `history` (`--history`): each row against the spread its own median has shown over the runs
  recorded since its last change point (`stats.compare_to_history`). Sees machine-wide and
  every-backend changes, as far as the row's history is tight enough to tell.

`auto`, the default: `ab` when the two reports are the halves of one A/B run (and with no
`--baseline`, the report's own other half), else `common`. A backend that ran in the baseline and
fails now fails the gate too; one missing or skipped now is listed but does not fail it.

Stream rows (`rnnc bench --stream`) are judged like any other, on their per-chunk samples; their
key carries the mode, and a streamed report is never compared with a plain one (exit 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnc import history as hist
from rnnc import stats
from rnnc.errors import UserError
from rnnc.reports import schema
from rnnc.reports.tables import text_table

FAILING = ("FAIL", "BROKEN")
MODES = ("auto", "ab", "common", "plain", "normalized", "history")
MODE_NAMES = {
    "ab": "same-run A/B: both builds measured in the same interleaved rounds",
    "common": "baseline from an earlier run, each backend relative to the drift its shape's backends share",
    "plain": "the samples' own noise only",
    "normalized": "calibration-normalised times",
    "history": "each row against the noise its history has shown",
}
DRIFT_ALLOWANCE = 0.30  # the shared drift `common` divides out, up to this; see the module docstring
HISTORY_WINDOW = 20  # runs of a row's history the band is taken over (the latest, since its last step)
MIN_HISTORY = 5  # fewer and a row's verdict is "?": too little history to know its noise


@dataclass(frozen=True)
class RowChange:
    key: schema.RowKey
    base: float | None  # baseline median (ms, or calibration units when normalised)
    new: float | None
    cmp: stats.Comparison | None
    verdict: str  # FAIL BROKEN slower faster same ? missing new "not run"
    note: str = ""
    cv: float | None = None  # the new row's coefficient of variation


def gate(report_path: Path, baseline_path: Path | None = None, max_regression: float = 0.10,
         mode: str = "auto", history: str | None = None) -> tuple[int, str]:
    """Exit code (0 pass, 1 a regression) and the table of every row's change; a `UserError`
    (exit 2) for reports that cannot be compared. See the module docstring for the modes."""
    if not max_regression > 0:
        raise UserError(f"--max-regression: must be > 0, got {max_regression}")
    if mode not in MODES:
        raise UserError(f"--mode: unknown mode {mode!r}: choose from {', '.join(MODES)}")
    report_path = Path(report_path)
    report = schema.load(report_path)
    if history is not None or mode == "history":
        if history is None:
            raise UserError("--mode history needs --history HISTORY")
        if baseline_path is not None:
            raise UserError("--baseline and --history are alternatives: choose one")
        if mode not in ("auto", "history"):
            raise UserError(f"--history judges against the history's noise: --mode {mode} does not apply")
        mode, changes = "history", compare_history(report, hist.load(history), max_regression)
        base_name = str(history)
    else:
        baseline_path = _baseline_path(report, report_path, baseline_path)
        baseline = schema.load(baseline_path)
        mode = _mode(mode, report, baseline, baseline_path)
        changes = compare_reports(baseline, report, max_regression, mode)
        base_name = str(baseline_path)
    if not any(c.base is not None and c.new is not None for c in changes):
        raise UserError(f"{report_path} and {base_name} have no timed row in common (model, backend, "
                        f"batch size, sequence length): nothing to compare")
    code = 1 if any(c.verdict in FAILING for c in changes) else 0
    return code, format_changes(changes, max_regression, mode, code)


def _baseline_path(report: dict[str, Any], report_path: Path, baseline_path: Path | None) -> Path:
    if baseline_path is not None:
        return Path(baseline_path)
    ab = report.get("ab") or {}
    if ab.get("role") == "new" and ab.get("against"):
        return report_path.parent / ab["against"]
    raise UserError(f"{report_path}: give --baseline BASE.json or --history HISTORY (or bench with --against "
                    f"OLD_DIR, whose report carries its baseline)")


def same_run(report: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """Whether the two reports are the halves of one A/B bench (`rnnc bench --against`)."""
    run = (report.get("ab") or {}).get("run")
    return bool(run) and run == (baseline.get("ab") or {}).get("run")


def default_mode(report: dict[str, Any], baseline: dict[str, Any]) -> str:
    """`auto`'s choice for two reports: `ab` for the halves of one A/B run, else `common`."""
    return "ab" if same_run(report, baseline) else "common"


def _mode(mode: str, report: dict[str, Any], baseline: dict[str, Any], baseline_path: Path) -> str:
    if mode == "auto":
        return default_mode(report, baseline)
    if mode == "ab" and not same_run(report, baseline):
        raise UserError(f"--mode ab: {baseline_path} was not measured in the same A/B run as the report "
                        f"(rnnc bench NEW --against OLD writes both)")
    return mode


def check_comparable(baseline: dict[str, Any], report: dict[str, Any], normalize: bool) -> None:
    """Raise UserError (exit 2) for reports that cannot be compared row by row."""
    if baseline.get("kind") != report.get("kind"):
        raise UserError(f"reports of different schema: a {report.get('kind')} report against a "
                        f"{baseline.get('kind')} baseline")
    if baseline["target"] != report["target"]:
        raise UserError(f"reports of different targets: {report['target']} against a {baseline['target']} "
                        f"baseline")
    threads = [_threads(r) for r in (report, baseline)]
    if threads[0] != threads[1]:
        raise UserError(f"reports measured with different thread counts: {threads[0]} against {threads[1]} "
                        f"in the baseline (rnnc bench --threads)")
    modes = [_stream(r) for r in (report, baseline)]
    if modes[0] != modes[1]:
        raise UserError(f"reports of different kinds: a {modes[0]} report against a {modes[1]} baseline "
                        f"(a streamed chunk and a plain call are different measurements)")
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
            raise UserError(f"--mode normalized: the reports' calibration workloads differ ({shown})")
        for which, r in (("report", report), ("baseline", baseline)):
            if not r["calibration"].get("samples_ms"):
                raise UserError(f"--mode normalized: the {which} has no calibration samples")


def _stream(report: dict[str, Any]) -> str:
    """`--stream` or plain: from the settings, or from the rows of a report without them."""
    streamed = (report.get("settings") or {}).get("stream") or any(r.get("mode") == "stream" for r in report["rows"])
    return "--stream" if streamed else "plain"


def _threads(report: dict[str, Any]) -> Any:
    return (report.get("settings") or {}).get("threads") or "default"


def compare_reports(baseline: dict[str, Any], report: dict[str, Any], max_regression: float,
                    mode: str = "plain") -> list[RowChange]:
    """Every row's change from `baseline` to `report` in `mode` (ab, common, plain, normalized)."""
    normalize = mode == "normalized"
    check_comparable(baseline, report, normalize)
    base_rows = {schema.row_key(r): r for r in baseline["rows"]}
    new_rows = {schema.row_key(r): r for r in report["rows"]}
    scale_b = _scale(baseline, normalize)
    scale_n = _scale(report, normalize)
    units = ((baseline["calibration"]["samples_ms"], report["calibration"]["samples_ms"]) if normalize
             else (None, None))
    keys = list(base_rows) + [k for k in new_rows if k not in base_rows]
    models = set(report["models"])
    shared = _common_mode(base_rows, new_rows, max_regression) if mode == "common" else {}
    beyond = (1 + max_regression) * (1 + DRIFT_ALLOWANCE) - 1
    changes = []
    for key in keys:
        b, n = base_rows.get(key), new_rows.get(key)
        if key[0] not in models:
            continue  # a model the new report did not bench at all: not part of this comparison
        change = _change(key, b, n, scale_b, scale_n, max_regression, units)
        if key in shared:
            cmp, drift = shared[key]
            if drift.verdict == "fail":
                change = RowChange(key, change.base, change.new, drift, "FAIL",
                                   f"every backend of this shape slower together, {drift.ratio - 1:+.1%}: past "
                                   f"{beyond:+.0%}, more than the machine's drift explains", change.cv)
            else:
                change = RowChange(key, change.base, change.new, cmp, _verdict(cmp),
                                   f"common drift {drift.ratio - 1:+.1%}", change.cv)
        elif mode == "common" and change.cmp is not None:
            change = RowChange(key, change.base, change.new, change.cmp, change.verdict,
                               "fewer than 3 backends on this shape: not corrected for drift", change.cv)
        changes.append(change)
    return changes


def compare_history(report: dict[str, Any], runs: list[hist.HistoryRun], max_regression: float) -> list[RowChange]:
    """Every row of `report` against its own history: the runs of the same target, thread count
    and model fingerprint, since the row's last change point, the latest `HISTORY_WINDOW`."""
    target, threads = report["target"], _threads(report)
    mine = {schema.row_key(r): r.get("median_ms") for r in report["rows"]}
    # the report itself, when `rnnc bench --history` has already appended it, is not its own noise
    runs = [r for r in runs if {h.key: h.median_ms for h in r.rows} != mine]
    same = [r for r in runs if r.target == target and (r.threads or "default") == threads]
    if runs and not same:
        raise UserError(f"the history holds no run of target {target} with threads={threads} "
                        f"({len(runs)} runs of other settings): nothing to compare")
    points: dict[schema.RowKey, list[tuple[str | None, float]]] = {}  # one pass over the history
    for run in same:
        for h in run.rows:
            if h.status == "ok" and h.median_ms:
                points.setdefault(h.key, []).append((run.fingerprints.get(h.model), h.median_ms))
    changes = []
    for row in report["rows"]:
        key = schema.row_key(row)
        fp = (report["models"].get(key[0]) or {}).get("fingerprint")
        medians = [m for run_fp, m in points.get(key, []) if not fp or run_fp in (None, fp)]
        if row["status"] != "ok":
            verdict = "BROKEN" if row["status"] == "failed" and medians else "not run"
            changes.append(RowChange(key, None, None, None, verdict, row.get("reason") or row["status"]))
            continue
        if not medians:
            changes.append(RowChange(key, None, row["median_ms"], None, "new", "not in the history", row.get("cv")))
            continue
        steps = hist.find_steps(medians) if len(medians) >= 2 * MIN_HISTORY else []
        since = medians[steps[-1].index:] if steps else medians
        window = since[-HISTORY_WINDOW:]
        center = stats.median(window)
        if len(window) < MIN_HISTORY:
            changes.append(RowChange(key, center, row["median_ms"], None, "?",
                                     f"{len(window)} runs of history since its last step: too few to know its noise",
                                     row.get("cv")))
            continue
        cmp = stats.compare_to_history(window, row["median_ms"], max_regression)
        note = f"band of {len(window)} runs" + (f" since the step at run {len(medians) - len(since) + 1}"
                                                 if steps else "")
        changes.append(RowChange(key, center, row["median_ms"], cmp, _verdict(cmp), note, row.get("cv")))
    return changes


def _verdict(cmp: stats.Comparison) -> str:
    return {"fail": "FAIL", "unknown": "?"}.get(cmp.verdict, cmp.verdict)


def _common_mode(base_rows: dict[schema.RowKey, Any], new_rows: dict[schema.RowKey, Any],
                 max_regression: float) -> dict[schema.RowKey, tuple[stats.Comparison, stats.Comparison]]:
    """Common-mode comparisons of every shape where three or more backends ran in both reports, and
    each shape's shared drift, judged against the threshold on top of `DRIFT_ALLOWANCE`."""
    groups: dict[tuple[Any, ...], list[schema.RowKey]] = {}
    for key, b in base_rows.items():
        n = new_rows.get(key)
        if b["status"] == "ok" and n is not None and n["status"] == "ok" and b.get("has_samples", True) \
                and n.get("has_samples", True):
            groups.setdefault(key[:1] + key[2:], []).append(key)  # a shape (and mode): its backends together
    out = {}
    for keys in groups.values():
        if len(keys) < 3:
            continue
        base = {k[1]: base_rows[k]["samples_ms"] for k in keys}
        new = {k[1]: new_rows[k]["samples_ms"] for k in keys}
        cmps, drift = stats.common_mode(base, new, max_regression, (1 + max_regression) * (1 + DRIFT_ALLOWANCE) - 1)
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
            verdict = _verdict(cmp)
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


def format_changes(changes: list[RowChange], max_regression: float, mode: str, code: int) -> str:
    """The gate's output: a table of every row (change, interval, verdict, why), then a summary line."""
    unit = "x cal" if mode == "normalized" else "ms"
    header = ("model", "backend", "batch", "seq", f"base {unit}", f"new {unit}", "change", "95% interval",
              "p(slower)", "cv", "verdict", "why")
    rows = []
    for c in changes:
        cmp = c.cmp
        ci = f"[{cmp.ci_low - 1:+.1%}, {cmp.ci_high - 1:+.1%}]" if cmp and not math.isnan(cmp.ci_low) else "-"
        change = f"{cmp.ratio - 1:+.1%}" if cmp else f"{c.new / c.base - 1:+.1%}" if c.base and c.new else "-"
        rows.append((c.key[0], schema.key_label(c.key), str(c.key[2]), str(c.key[3]), _num(c.base), _num(c.new),
                     change, ci,
                     f"{cmp.p_slower:.3f}" if cmp and not math.isnan(cmp.p_slower) else "-",
                     f"{c.cv:.1%}" if c.cv is not None else "-", c.verdict, _why(c, max_regression)))
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    failed = [c for c in changes if c.verdict in FAILING]
    verdict = (f"gate FAILED: {len(failed)} of {len(changes)} rows regressed past {max_regression:.0%} "
               f"({', '.join(f'{schema.key_label(c.key)} b{c.key[2]} s{c.key[3]}' for c in failed[:6])}"
               f"{', ...' if len(failed) > 6 else ''})"
               if code else f"gate passed: no row slower than {max_regression:.0%} beyond its noise")
    return "\n".join([f"gate mode: {mode} ({MODE_NAMES[mode]})", "",
                      text_table(header, rows, right=range(2, 10)), "",
                      f"{verdict}; {len(changes)} rows: {summary}"])


def _why(c: RowChange, max_regression: float) -> str:
    """The reason of a verdict in words, then the mode's note."""
    cmp, limit = c.cmp, f"+{max_regression:.0%}"
    reason = {
        "FAIL": f"even the interval's low end is past {limit}",
        "slower": f"slower beyond noise, but not past {limit} beyond it",
        "faster": "faster beyond noise",
        "same": "the interval holds no change",
    }.get(c.verdict, "") if cmp is not None else ""
    return "; ".join(x for x in (reason, c.note) if x)


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if v < 100 else f"{v:.1f}"
