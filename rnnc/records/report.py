"""report.json (SPEC section 4): its rows as frozen records, its version history, atomic writes.

A `Row` is validated when the bench builds it (a row that ran has every timed key and positive,
finite samples; one that did not has a reason), and again when a file is read back. The document
around the rows stays plain JSON data: the renderer and the gate read it as such. Versions:
- 1: the first landing;
- 2: each row records the `precision` it ran (`fp32` unless the spec's dtype says otherwise);
- 3: optional keys of streaming rows (`mode: stream`, `chunks_per_s`, `chunk_ms`, `rtf`, `bind_ms`,
  `chunk_calls`, `state_resets`) and of generative models (`steps`, `ms_per_step`, `steps_per_s`,
  `first_step_ms`); a version 2 report is a version 3 one without them. The version says so to
  an older rnnc, which would otherwise refuse the new keys one by one.
- 4: optional keys of where a row stands against the machine (`gflops`, `roof_fraction`,
  `r_bytes_per_step`, `bw_fraction`, `bw_level`; `rnnc.bench.roof`) and the environment's `roof`;
  a version 3 report is a version 4 one without them.
- 5: optional keys of a row measured on a fleet (`rnnc bench --cluster`): the `node` that ran it
  and its `machine` class (`rnnc.host.MachineClass`), and the report's `cluster` (its classes,
  nodes with their environments, and the log of its jobs); a version 4 report is a version 5 one
  without them.

A row's key is (model, backend, batch size, sequence length), then the mode for a row that is
not a plain call (`stream`), then `@class` for a row measured on a machine class: a stream row and
a plain row of the same shape, or rows of two machine classes, are different measurements, so
resume, the gate and a history never take one for the other.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rnnc.errors import UserError
from rnnc.records.manifest import PRECISIONS

FORMAT = "rnnc-bench-report"
VERSION = 5
# model, backend, batch size, sequence length (the chunk length of a stream row), a mode if not
# plain, "@class" if measured on a fleet
RowKey = Union[tuple[str, str, int, int], tuple[str, str, int, int, str], tuple[str, str, int, int, str, str]]

STREAM_KEYS = ("chunks_per_s", "chunk_ms", "rtf", "bind_ms", "chunk_calls", "state_resets")
GENERATION_KEYS = ("ms_per_step", "steps_per_s", "first_step_ms")
ROOF_KEYS = ("gflops", "roof_fraction", "r_bytes_per_step", "bw_fraction", "bw_level")
TIMED_KEYS = ("samples_ms", "median_ms", "iqr_ms", "p90_ms", "p99_ms", "sequences_per_s", "tokens_per_s")
STATUSES = ("ok", "skipped", "failed")


class Row(BaseModel):
    """One (model, backend, batch size, sequence length) of a bench."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    backend: str
    batch_size: int
    seq_len: int
    status: Literal["ok", "skipped", "failed"]
    precision: str = "fp32"
    reason: Optional[str] = None
    samples_ms: Optional[tuple[float, ...]] = None
    preempted_ms: Optional[tuple[float, ...]] = None
    median_ms: Optional[float] = None
    iqr_ms: Optional[float] = None
    q1_ms: Optional[float] = None
    q3_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    min_ms: Optional[float] = None
    cv: Optional[float] = None
    sequences_per_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    loops: Optional[int] = None
    warmup_calls: Optional[int] = None
    first_call_ms: Optional[float] = None
    warning: Optional[str] = None
    check: Optional[dict[str, Any]] = None
    has_samples: Optional[bool] = None  # False: a pytest-benchmark row without its samples
    test_extra_work: Optional[float] = None
    # streaming (`rnnc bench --stream`): one call is one chunk of seq_len steps, the state carried
    mode: Optional[Literal["stream"]] = None
    chunks_per_s: Optional[float] = None  # 1000 / median_ms
    chunk_ms: Optional[float] = None  # the real time one chunk stands for (--chunk-ms)
    rtf: Optional[float] = None  # real-time factor, median_ms / chunk_ms: below 1 keeps up
    bind_ms: Optional[float] = None  # median of `runner.bind(**arrays)` alone: the floor of a call
    chunk_calls: Optional[int] = None  # chunks streamed in the row, warm-up included, one state throughout
    state_resets: Optional[int] = None  # times the carried state went non-finite and restarted at zeros
    # generative models (one_to_many, encoder_decoder): every call generates `steps` steps
    steps: Optional[int] = None
    ms_per_step: Optional[float] = None  # median_ms / steps
    steps_per_s: Optional[float] = None  # 1000 * steps / median_ms, for each sequence of the batch
    first_step_ms: Optional[float] = None  # latency to the first step; only where the backend can run it
    # against the machine (`rnnc.bench.roof`), where the model's work is known (`rnnc.graphs.work`)
    gflops: Optional[float] = None  # the model's FLOPs per call / median_ms
    roof_fraction: Optional[float] = None  # gflops / the environment's measured sgemm roof
    r_bytes_per_step: Optional[int] = None  # the recurrent weights R one step reads, at the row's precision
    bw_fraction: Optional[float] = None  # time to read R per call at bw_level's bandwidth / median_ms
    bw_level: Optional[Literal["L2", "L3", "memory"]] = None  # the level R fits in
    # a fleet sweep (`rnnc bench --cluster`): where the row was measured
    node: Optional[str] = None  # the node's name (its environment is in the report's cluster.nodes)
    machine: Optional[str] = None  # the node's machine class (`MachineClass.name`)

    @model_validator(mode="after")
    def _complete(self) -> Row:
        if self.status == "ok":
            absent = [k for k in TIMED_KEYS if getattr(self, k) is None]
            absent += [k for k in self._needed() if getattr(self, k) is None]
            if absent:
                raise ValueError(f"a row that ran needs {', '.join(absent)}")
            if not self.samples_ms or not all(math.isfinite(v) and v > 0 for v in self.samples_ms):
                raise ValueError("samples_ms must be a non-empty list of positive numbers")
        elif not self.reason:
            raise ValueError("a row that did not run needs a reason")
        if self.mode is None and any(getattr(self, k) is not None for k in STREAM_KEYS):
            raise ValueError(f"{', '.join(k for k in STREAM_KEYS if getattr(self, k) is not None)}: "
                             f"only on a stream row (mode: stream)")
        if (self.rtf is None) != (self.chunk_ms is None):
            raise ValueError("rtf and chunk_ms go together")
        if self.steps is None and any(getattr(self, k) is not None for k in GENERATION_KEYS):
            raise ValueError("ms_per_step, steps_per_s and first_step_ms: only on a row with steps")
        if self.status != "ok" and any(getattr(self, k) is not None for k in ROOF_KEYS):
            raise ValueError(f"{', '.join(k for k in ROOF_KEYS if getattr(self, k) is not None)}: only on a row that ran")
        if any(v is not None and not (math.isfinite(v) and v >= 0)
               for v in (self.gflops, self.roof_fraction, self.bw_fraction, self.r_bytes_per_step)):
            raise ValueError("gflops, roof_fraction, r_bytes_per_step and bw_fraction must be finite and >= 0")
        return self

    def _needed(self) -> list[str]:
        """The keys a timed row of its kind must have, beyond `TIMED_KEYS`."""
        return (["chunks_per_s"] if self.mode == "stream" else []) + \
            (["ms_per_step", "steps_per_s"] if self.steps is not None else [])

    @property
    def key(self) -> RowKey:
        return key_of(self.model, self.backend, self.batch_size, self.seq_len, self.mode, self.machine)

    def to_json(self) -> dict[str, Any]:
        """The row as report.json holds it (absent fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def key_of(model: str, backend: str, batch: int, seq: int, mode: str | None = None,
           machine: str | None = None) -> RowKey:
    """The key of a row: a plain row's is the four fields, other modes' add the mode, and a row
    of a fleet sweep its machine class, as "@class"."""
    key = (str(model), str(backend), int(batch), int(seq))
    key += () if mode is None else (str(mode),)
    return key + (() if machine is None else (f"@{machine}",))


def row_key(row: dict[str, Any] | Row) -> RowKey:
    if isinstance(row, Row):
        return row.key
    return key_of(row["model"], row["backend"], row["batch_size"], row["seq_len"], row.get("mode"),
                  row.get("machine"))


def key_label(key: RowKey) -> str:
    """A key's backend as tables name it: `onnxruntime`, `onnxruntime (stream)` for a stream row,
    `onnxruntime @skylake` for a row of machine class skylake."""
    return " ".join([key[1]] + [part if part.startswith("@") else f"({part})" for part in key[4:]])


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


def _v1_to_v2(report: dict[str, Any]) -> dict[str, Any]:
    models = report.get("models") if isinstance(report.get("models"), dict) else {}

    def precision(row: Any) -> str:
        spec = (models.get(row.get("model")) or {}).get("spec") if isinstance(row, dict) else None
        return PRECISIONS.get((spec or {}).get("dtype", "float32"), "fp32")

    rows = [{**r, "precision": r.get("precision", precision(r))} if isinstance(r, dict) else r
            for r in report.get("rows") or []]
    return {**report, "version": 2, "rows": rows}


def _v2_to_v3(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "version": 3}  # only optional keys were added


def _v3_to_v4(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "version": 4}  # only optional keys were added


def _v4_to_v5(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "version": 5}  # only optional keys were added


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4,
                                                                   4: _v4_to_v5}


def upgrade(report: Any) -> Any:
    """An rnnc report of an older version mapped forward; anything else returned as it came."""
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        return report
    while report.get("version") in UPGRADES:
        report = UPGRADES[report["version"]](report)
    return report


def validate_report(report: Any) -> list[str]:
    """Every problem with a report's structure, one line each (empty when it is valid)."""
    if not isinstance(report, dict):
        return ["not a JSON object"]
    if report.get("format") != FORMAT:
        return [f"not an rnnc bench report (format {report.get('format')!r}, expected {FORMAT!r})"]
    if report.get("version") != VERSION:
        return [f"report version {report.get('version')!r} is not one this rnnc reads (version {VERSION} "
                "and the older ones it upgrades)"]
    problems = [f"{key}: missing or not a {kind.__name__}"
                for key, kind in (("models", dict), ("rows", list), ("calibration", dict), ("target", str))
                if not isinstance(report.get(key), kind)]
    if problems:
        return problems
    seen: set[RowKey] = set()
    for i, row in enumerate(report["rows"]):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            problems.append(f"{where}: not an object")
            continue
        try:
            Row.model_validate(row)
        except ValidationError as err:
            problems.append(f"{where}: {_first(err)}")
            continue
        if row["model"] not in report["models"]:
            problems.append(f"{where}: model {row['model']!r} is not in models")
        key = row_key(row)
        if key in seen:
            problems.append(f"{where}: a second row of {key_label(key)} batch {key[2]} seq {key[3]} of model "
                            f"{key[0]!r}: a row's key must be unique")
        seen.add(key)
    return problems


def load_report(path: Path) -> dict[str, Any]:
    """An rnnc report file, upgraded and validated; a `UserError` naming the first problem."""
    data = read_json(path)
    return checked(upgrade(data), path)


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such report file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def checked(report: Any, path: Path) -> dict[str, Any]:
    problems = validate_report(report)
    if problems:
        raise UserError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return report


def write_atomic(path: Path, report: dict[str, Any]) -> None:
    """Write through a temporary file and a rename, so a killed run never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: the previous report stays, no stray half-file
        tmp.unlink(missing_ok=True)
        raise


def _first(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return f"missing {where}"
    return f"{where}: {msg}" if where else msg
