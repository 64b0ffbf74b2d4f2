"""What a rendered report says, as a list of blocks that `markdown` and `html` each write out.

Keeping the content in one place means the Markdown and the HTML never disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rnnc.reports import classes, schema

ROOF_AIM = 0.80  # the share of the sgemm roof a row of batch 16 and up aims at


@dataclass(frozen=True)
class Block:
    kind: str  # h1 h2 h3 p warn table image
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    right: tuple[int, ...] = field(default=())
    image: str = ""  # path relative to the rendered files


def document(report: dict[str, Any], baseline: dict[str, Any] | None, images: dict[str, list[tuple[str, str]]],
             changes: dict[schema.RowKey, Any] | None = None) -> list[Block]:
    """The blocks of a report; `images` maps a model to its plots, each (caption, file), and
    `changes` a row key to its `gate.RowChange` against the baseline."""
    models = list(report["models"])
    blocks = [Block("h1", f"rnnc bench: {', '.join(models) if len(models) <= 3 else f'{len(models)} models'}"
                          f" on {report['target']}")]
    extra = report.get("test_extra_work")
    if extra:
        blocks.append(Block("warn", "TEST-ONLY extra work was injected into this run ("
                            + ", ".join(f"{b} +{f:.0%}" for b, f in extra.items())
                            + "): its timings are slowed on purpose and say nothing about the backends."))
    if not report.get("finished", True):
        blocks.append(Block("warn", "Partial report: the sweep was interrupted; `rnnc bench ... --resume` "
                                    "with the same --out completes it."))
    settings = report.get("settings") or {}
    cv_warn = settings.get("cv_warn", 0.10)
    blocks.append(Block("p", "Each timed row is the median of its samples (one sample = the mean of `loops` "
                             "back-to-back calls, after warm-up), with the interquartile range (IQR) and "
                             "the 90th/99th percentiles, in milliseconds per call; throughput is taken at "
                             "the median. Backends are measured interleaved on the same inputs. "
                             f"Speed-up is the torch median over the backend's. ⚠ marks a row whose "
                             f"coefficient of variation exceeds {cv_warn:.0%}: too noisy to trust."))
    if changes is not None:
        blocks.append(Block("p", "Against the baseline: change of each row's median, the 95% bootstrap interval "
                                 "of that change, and the verdict of `rnnc gate --max-regression 10%` in its "
                                 "default mode (FAIL only when the whole interval is past +10%). For a baseline "
                                 "from an earlier run the change is relative to the drift shared by the "
                                 "backends of its shape; for an A/B bench (`--against`) it is the plain change, "
                                 "both builds measured in the same rounds."))
    views = [(machine, classes.of_class(report, machine)) for machine in classes.machines(report)]
    if not views:
        blocks += _environment([("this report", report)] + ([("baseline", baseline)] if baseline else []))
        for name in models:
            blocks += _heading(report, name) + _model_rows(report, name, images.get(name, []), changes)
        return blocks
    blocks.append(Block("p", "Measured on a fleet (`rnnc bench --cluster`): one table per machine class, each "
                             "class's rows measured on its own nodes, every backend interleaved on one node; "
                             "speed-up over torch is within a class. The last plot of each model compares the "
                             "classes."))
    blocks += _environment(views + ([("baseline", baseline)] if baseline else []))
    for name in models:
        blocks += _heading(report, name)
        for machine, view in views:
            blocks += [Block("h3", f"{name} on {machine}"), Block("p", classes.describe(report, machine))]
            blocks += _model_rows(view, name, images.get(f"{name} @{machine}", []), changes)
        blocks += [Block("image", text=f"{name}: {caption}", image=image) for caption, image in images.get(name, [])]
    return blocks


def _environment(sides: list[tuple[str, dict[str, Any]]]) -> list[Block]:
    """The environment table, a column for each side: this report and its baseline, or each class."""
    names, sides = [n for n, _ in sides], [s for _, s in sides]
    keys = [("CPU", lambda r: _get(r, "environment", "cpu", "model")),
            ("cores", lambda r: _get(r, "environment", "cpu", "cores")),
            ("ISA", lambda r: " ".join(_get(r, "environment", "cpu", "isa") or []) or None),
            ("GPU", lambda r: _get(r, "environment", "gpu") or "none"),
            ("OS", lambda r: _get(r, "environment", "os")),
            ("threads per runtime", lambda r: _get(r, "settings", "threads") or
             f"runtime defaults (torch {_get(r, 'environment', 'threads', 'torch_intra_op') or '?'})"),
            ("git revision", lambda r: _get(r, "environment", "git"))]
    for lib in ("python", "numpy", "torch", "onnxruntime", "apache-tvm", "rnnc"):
        keys.append((lib, lambda r, lib=lib: _get(r, "environment", "versions", lib)))
    keys += [("target", lambda r: r.get("target")),
             ("min samples / min time per row", lambda r: _settings(r)),
             ("--check", lambda r: _get(r, "settings", "check")),
             ("calibration", lambda r: _calibration(r)),
             ("sgemm roof", lambda r: _roof(r, "sgemm_gflops", "GFLOP/s")),
             ("L2 bandwidth", lambda r: _roof(r, "l2_gbps", "GB/s", "l2_bytes", "L2 of the cores used: {}")),
             ("L3 bandwidth", lambda r: _roof(r, "l3_gbps", "GB/s", "l3_bytes", "L3 {}")),
             ("memory bandwidth", lambda r: _roof(r, "memory_gbps", "GB/s", "memory_buffer_bytes", "reading {}"))]
    header = ("", *names)
    rows = tuple((k,) + tuple("-" if f(s) is None else str(f(s)) for s in sides) for k, f in keys)
    return [Block("h2", "Environment"), Block("table", header=header, rows=rows)]


def _heading(report: dict[str, Any], name: str) -> list[Block]:
    info = report["models"][name]
    blocks = [Block("h2", name)]
    if info.get("spec"):
        blocks.append(Block("p", describe_spec(info["spec"]) + f" (spec fingerprint {info.get('fingerprint')})."))
    return blocks


def _model_rows(report: dict[str, Any], name: str, images: list[tuple[str, str]],
                changes: dict[schema.RowKey, Any] | None) -> list[Block]:
    """A model's build table, its rows' table and its plots (of one machine, or one class's view)."""
    info, blocks = report["models"][name], []
    build = info.get("backends") or {}
    if build:
        rows = tuple((b, str(v.get("status")), _f(v.get("build_time_s"), "{:.2f}"), _bytes(v.get("artifact_bytes")),
                      _f(v.get("rel_err"), "{:.1e}"), v.get("reason") or "")
                     for b, v in build.items())  # in table order, as the bench wrote them
        blocks.append(Block("table", header=("backend", "status", "build s", "artifact", "rel err", "reason"),
                            rows=rows, right=(2, 3, 4)))
    rows = [r for r in report["rows"] if r["model"] == name]
    blocks += _kinds(rows)
    torch_ms = {(r["batch_size"], r["seq_len"], r.get("mode")): r["median_ms"] for r in rows
                if r["backend"] == "torch" and r["status"] == "ok"}
    extra = extra_columns(rows)
    streamed = any(r.get("mode") == "stream" for r in rows)
    header = ("backend", "batch", "chunk" if streamed else "seq", "median ms", "IQR ms", "p90 ms", "p99 ms", "seq/s",
              "tokens/s", *(h for h, _ in extra), "vs torch", "cv", "n")
    if changes is not None:
        header += ("base ms", "change", "95% CI", "verdict")
    header += ("note",)
    table = []
    for r in rows:
        key = schema.row_key(r)
        if r["status"] != "ok":
            cells = (r["backend"], str(r["batch_size"]), str(r["seq_len"]), r["status"].upper(),
                     *([""] * (8 + len(extra))))
            note = r.get("reason") or ""
        else:
            t = torch_ms.get((r["batch_size"], r["seq_len"], r.get("mode")))
            warn = " ⚠" if r.get("warning") else ""
            cells = (r["backend"], str(r["batch_size"]), str(r["seq_len"]), _ms(r["median_ms"]), _ms(r["iqr_ms"]),
                     _ms(r["p90_ms"]), _ms(r["p99_ms"]), _rate(r["sequences_per_s"]), _rate(r["tokens_per_s"]),
                     *(cell(r) for _, cell in extra),
                     f"{t / r['median_ms']:.2f}x" if t else "-", f"{r.get('cv', 0):.1%}{warn}",
                     str(len(r["samples_ms"])))
            note = r.get("warning") or ""
        if changes is not None:
            c = changes.get(key)
            cells += _change_cells(c)
        table.append(cells + (note,))
    right = tuple(i for i, h in enumerate(header) if h not in ("backend", "95% CI", "verdict", "note"))
    blocks.append(Block("table", header=header, rows=tuple(table), right=right))
    checked = [r["check"] for r in rows if r.get("check")]
    if checked:
        worst = max((c["rel_err"] for c in checked if c.get("rel_err") is not None), default=None)
        wrong = sum(not c["passed"] for c in checked)
        blocks.append(Block("p", f"--check: {len(checked) - wrong} of {len(checked)} rows matched the float64 "
                                 f"reference on the inputs they were timed on (worst rel err "
                                 f"{'-' if worst is None else f'{worst:.1e}'})"
                                 + (f"; {wrong} did not and were not timed." if wrong else ".")))
    for caption, image in images:
        blocks.append(Block("image", text=f"{name}: {caption}", image=image))
    return blocks


def extra_columns(rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The columns of stream and generation rows, (header, cell of a timed row), each only where
    some row has it, so that a plain report's table stays as it was."""
    def has(key: str) -> bool:
        return any(r.get(key) is not None for r in rows if r["status"] == "ok")

    def num(key: str, fmt: Any) -> Any:
        return lambda r: "-" if r.get(key) is None else fmt(r[key])

    columns = [("chunks/s", "chunks_per_s", _rate), ("RTF", "rtf", lambda v: f"{v:.3g}"),
               ("bind ms", "bind_ms", _ms), ("steps", "steps", str), ("ms/step", "ms_per_step", _ms),
               ("steps/s", "steps_per_s", _rate), ("first step ms", "first_step_ms", _ms),
               ("GFLOP/s", "gflops", _gflops), ("% roof", "roof_fraction", _percent),
               ("R/step", "r_bytes_per_step", _bytes)]
    found = [(header, num(key, fmt)) for header, key, fmt in columns if has(key)]
    if has("bw_fraction"):
        found.append(("R bw", lambda r: "-" if r.get("bw_fraction") is None
                      else f"{_percent(r['bw_fraction'])} {r.get('bw_level') or ''}".rstrip()))
    return found


def _kinds(rows: list[dict[str, Any]]) -> list[Block]:
    """What the columns of stream, generation and roofline figures mean, where the model has such rows."""
    ok = [r for r in rows if r["status"] == "ok"]
    blocks = _roofline(ok)
    if any(r.get("mode") == "stream" for r in rows):
        chunk = next((r["chunk_ms"] for r in ok if r.get("chunk_ms") is not None), None)
        blocks.append(Block("p", "Streamed (`rnnc bench --stream`): each call is one chunk of `chunk` steps on "
                                 "fresh inputs, the state carried from the call before (each backend its own "
                                 "stream, never reset between samples); the times are per chunk. chunks/s is "
                                 "1000 / median ms" + (f"; RTF, the real-time factor, is median ms / {chunk:g} ms "
                                                       f"(the real time of one chunk): below 1 keeps up"
                                                       if chunk is not None else "")
                                 + ". bind ms is `runner.bind(**arrays)` alone on the same inputs (checking and "
                                   "converting them): the floor under each chunk."))
    steps = sorted({r["steps"] for r in ok if r.get("steps") is not None})
    if steps:
        blocks.append(Block("p", f"Generative: each call generates {', '.join(map(str, steps))} steps. ms/step is "
                                 "median ms / steps, steps/s the steps each sequence of the batch advances per "
                                 "second; first step ms is the latency to the first step, timed on the same spec "
                                 "generating one step (for an encoder-decoder: the encoder and one step)."))
    return blocks


def _roofline(ok: list[dict[str, Any]]) -> list[Block]:
    """What GFLOP/s, % roof and R bw mean, and how the rows of batch 16 and up stand against the aim."""
    if not any(r.get("gflops") is not None for r in ok):
        return []
    text = ("Against the machine (the environment's measured figures): GFLOP/s is the model's matmul FLOPs per "
            "call (counted from its graph) over the median; % roof is that over the measured float32 sgemm roof "
            "(a bf16 or int8 row may pass it). R/step "
            "is the recurrent weights R one step reads at the row's precision; R bw is the share of the median "
            "that reading R alone, every step, would take at the bandwidth of the level it fits in (L2, L3 or "
            "memory): near 100% the row is bound by its weight traffic.")
    big = [r for r in ok if r["batch_size"] >= 16 and r.get("roof_fraction") is not None]
    if big:
        best = max(big, key=lambda r: r["roof_fraction"])
        reached = sum(r["roof_fraction"] >= ROOF_AIM for r in big)
        text += (f" At batch 16 and up the aim is {ROOF_AIM:.0%} of the roof: {reached} of {len(big)} rows reach "
                 f"it (best {_percent(best['roof_fraction'])}, {best['backend']} batch {best['batch_size']} "
                 f"seq {best['seq_len']}).")
    return [Block("p", text)]


def _change_cells(c: Any) -> tuple[str, str, str, str]:
    if c is None:
        return ("-", "-", "-", "-")
    cmp = c.cmp
    ci = f"[{cmp.ci_low - 1:+.1%}, {cmp.ci_high - 1:+.1%}]" if cmp and not math.isnan(cmp.ci_low) else "-"
    change = f"{cmp.ratio - 1:+.1%}" if cmp else f"{c.new / c.base - 1:+.1%}" if c.base and c.new else "-"
    return (_ms(c.base) if c.base else "-", change, ci, c.verdict)


def describe_spec(spec: dict[str, Any]) -> str:
    rnn, inp, out = spec.get("rnn", {}), spec.get("input", {}), spec.get("output", {})
    source = (f"tokens (vocabulary {inp.get('vocab_size')}, embedding {inp.get('embedding_dim')})"
              if inp.get("type") == "tokens" else f"{inp.get('features')} features per step")
    layers = rnn.get("num_layers", 1)
    text = (f"{str(rnn.get('cell', '?')).upper()} hidden {rnn.get('hidden_size')}, {layers} layer"
            f"{'s' if layers != 1 else ''}{', bidirectional' if rnn.get('bidirectional') else ''}; input {source}; "
            f"output {out.get('mode')}")
    dense = out.get("dense")
    if dense:
        text += f" then dense {dense.get('units')} ({dense.get('activation')})"
    return text + f"; {spec.get('dtype', 'float32')}"


def _settings(r: dict[str, Any]) -> str | None:
    s = r.get("settings") or {}
    if "min_count" not in s:
        return None
    return f"{s['min_count']} / {s.get('min_time_s', '?')}s (warm-up {s.get('warmup_s', '?')}s)"


def _calibration(r: dict[str, Any]) -> str | None:
    cal = r.get("calibration") or {}
    if not cal.get("samples_ms"):
        return None
    from rnnc import stats

    s = cal["samples_ms"]
    return f"{cal.get('workload')}: median {stats.median(s):.4g} ms, IQR {stats.iqr(s):.2g} ms ({len(s)} samples)"


def _roof(r: dict[str, Any], key: str, unit: str, size: str | None = None, label: str = "{}") -> str | None:
    """One figure of the environment's `roof` (`rnnc.bench.roof`), with the size it stands for."""
    roof = _get(r, "environment", "roof") or {}
    if roof.get(key) is None:
        return None
    text = f"{roof[key]:,.4g} {unit}"
    if size is not None and roof.get(size):
        text += f" ({label.format(_bytes(roof[size]))})"
    if key == "sgemm_gflops":
        text += f" ({roof.get('threads')} threads, measured in {roof.get('measure_s', 0):.2g} s)"
    return text


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _gflops(v: float) -> str:
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def _percent(v: float) -> str:
    return f"{v:.1%}"


def _ms(v: float) -> str:
    return f"{v:.4g}" if v < 1000 else f"{v:.0f}"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
