"""ONNX's own backend node tests, run through rnnc's command line exactly as a user would.

Each case of ONNX's node test suite (`test_*/model.onnx` with `test_data_set_*/input_*.pb` and
`output_*.pb`) is compiled with `rnnc compile MODEL --target cpu --backends ...`, every backend that
built is run with `rnnc run DIR --backend NAME --inputs in.npz`, and each output is compared with
ONNX's expected output at the tolerance of ONNX's own backend tests (rtol 1e-3, atol 1e-7; NaN
equal to NaN; exact for integers, bools and strings; shapes and dtypes must match). Going through
the CLI, not the Python API, means that what is counted is what a user gets, exit codes included.

    python bench/onnx_node_tests.py --ops Add,Relu,LSTM --backends onnxruntime,tvm --jobs 2 --out build/node

Outcomes per case and backend: passed; failed (wrong values, with the max abs error); refused
(rnnc's import refused the model: its one line); skipped (the backend skipped it: its reason);
errored (a command crashed or timed out: exit code and its line); not a tensor case (sequence,
optional or map inputs or outputs, which `rnnc run`'s .npz cannot carry). It prints a table per
backend, and writes DIR/results.json (one record per case and backend) and DIR/summary.md (every
failure grouped by its normalised reason).

Where the test data come from: some onnx wheels ship `onnx/backend/test/data/node/`; others (1.23
here) ship only the Python that generates the cases. Then the cases are written once, in the same
on-disk layout, to $XDG_CACHE_HOME/rnnc/onnx-node-tests/onnx-VERSION/node (about 20 s);
`--data DIR` points at any other copy (e.g. an onnx source checkout's).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

RTOL = 1e-3  # what onnx.backend.test.runner uses for node cases (TestCase.rtol / atol)
ATOL = 1e-7
STANDARD_DOMAINS = ("", "ai.onnx")
DEFAULT_BACKENDS = ("onnxruntime", "tvm")
DEFAULT_TIMEOUT_S = 600.0

# Outcome categories, in the order the tables show them.
PASSED, FAILED, REFUSED, SKIPPED, ERRORED, NOT_TENSOR = (
    "passed", "failed", "refused", "skipped", "errored", "not a tensor case")
OUTCOMES = (PASSED, FAILED, REFUSED, SKIPPED, ERRORED, NOT_TENSOR)


@dataclass
class Record:
    """One case on one backend: what happened and why (the unit of results.json)."""

    case: str
    backend: str
    outcome: str
    reason: str = ""
    ops: list[str] = field(default_factory=list)
    max_abs_err: float | None = None
    bound: list[str] = field(default_factory=list)   # inputs fixed with --bind on the retry
    compile_status: str | None = None                # the manifest's status, when compile got that far
    seconds: float = 0.0                             # compile + run wall time of the case


@dataclass(frozen=True)
class Options:
    """What every case needs to know; passed to the worker processes as is (picklable)."""

    backends: tuple[str, ...]
    out: Path
    timeout_s: float = DEFAULT_TIMEOUT_S
    keep: bool = False
    rtol: float = RTOL
    atol: float = ATOL


# --------------------------------------------------------------------------- test data


def installed_node_dir() -> Path:
    """Where an onnx wheel that ships the node test data keeps it."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


def cache_node_dir() -> Path:
    """Where this script writes the generated cases when the installed onnx ships none."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnc" / "onnx-node-tests" / f"onnx-{onnx.__version__}" / "node"


def node_data_dir(data: Path | None = None) -> Path:
    """The folder of `test_*` cases: --data, else the installed copy, else the cache (generated once)."""
    if data is not None:
        if not data.is_dir():
            raise SystemExit(f"--data {data}: no such directory")
        return data
    if installed_node_dir().is_dir():
        return installed_node_dir()
    cached = cache_node_dir()
    if not cached.is_dir():
        print(f"onnx {onnx.__version__} ships no node test data; writing it to {cached} (once)",
              file=sys.stderr)
        generate_node_data(cached)
    return cached


def generate_node_data(dest: Path, modules: Sequence[str] | None = None) -> int:
    """Write ONNX's node test cases to `dest` in the layout of onnx's own data/node folder.

    The cases come from onnx's generators (`onnx.backend.test.case.node`): importing a module runs
    its `export*` functions (each seeded with 0, so the data are the same every time), and the
    serialisation mirrors `onnx.backend.test.cmd_tools generate-data`. `modules` (e.g. ["add",
    "relu"]) imports only those case modules (plus any this process imported before): a quick
    subset for tests. Written to a temporary
    folder and renamed, so that parallel runs never see half a data set. Returns the case count.
    """
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the generators divide by zero on purpose
        warnings.simplefilter("ignore")
        if modules is None:
            cases = node_cases.collect_testcases()
        else:
            for name in modules:
                importlib.import_module(f"onnx.backend.test.case.node.{name}")
            cases = list(node_cases._NodeTestCases)
    tmp = dest.parent / f".{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for case in cases:
        if case.kind != "node" or case.model is None or not case.data_sets:
            continue
        case_dir = tmp / case.name
        case_dir.mkdir(parents=True)
        (case_dir / "model.onnx").write_bytes(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            set_dir = case_dir / f"test_data_set_{i}"
            set_dir.mkdir()
            for kind, infos, values in (("input", case.model.graph.input, inputs),
                                        ("output", case.model.graph.output, outputs)):
                for j, (info, value) in enumerate(zip(infos, values)):
                    (set_dir / f"{kind}_{j}.pb").write_bytes(_serialise(value, info).SerializeToString())
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first: its copy is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return len(cases)


def _serialise(value: Any, info: onnx.ValueInfoProto) -> Any:
    """One input or output value as the protobuf onnx's generate-data writes for its type."""
    t = info.type
    if t.HasField("map_type"):
        return numpy_helper.from_dict(value, info.name)
    if t.HasField("sequence_type"):
        return numpy_helper.from_list(value, info.name)
    if t.HasField("optional_type"):
        return numpy_helper.from_optional(value, info.name)
    if isinstance(value, onnx.TensorProto):
        return value
    return numpy_helper.from_array(value, info.name)


# --------------------------------------------------------------------------- selecting cases


def case_ops(model: onnx.ModelProto) -> list[str]:
    """The op types of the model's top-level nodes, in order of first use (domain-qualified if not standard)."""
    ops: list[str] = []
    for node in model.graph.node:
        name = node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"
        if name not in ops:
            ops.append(name)
    return ops


def select_cases(data_dir: Path, ops: set[str] | None = None, match: str | None = None,
                 limit: int | None = None) -> list[tuple[Path, list[str]]]:
    """The case folders to run, sorted by name, each with its op types.

    With `ops`, a case is picked when every one of its nodes' op types is in `ops` (so `--ops Add`
    picks test_add*, not the expanded function tests of other ops that happen to use an Add);
    without, every case whose nodes are all standard-domain ops (ai.onnx.ml and the training ops
    are not what rnnc is for). `match` is a regular expression searched in the case name.
    """
    picked = []
    for case_dir in sorted(p for p in data_dir.glob("test_*") if (p / "model.onnx").is_file()):
        if match and not re.search(match, case_dir.name):
            continue
        model = onnx.load(str(case_dir / "model.onnx"), load_external_data=False)
        names = case_ops(model)
        if ops is not None:
            if not names or not set(names) <= ops:
                continue
        elif any(n.domain not in STANDARD_DOMAINS for n in model.graph.node):
            continue
        picked.append((case_dir, names))
    return picked[:limit] if limit else picked


# --------------------------------------------------------------------------- one case


def non_tensor_reason(model: onnx.ModelProto) -> str | None:
    """Why a case's inputs or outputs cannot travel in an .npz (sequence, optional, map...), or None."""
    for kind, infos in (("input", model.graph.input), ("output", model.graph.output)):
        for info in infos:
            which = info.type.WhichOneof("value")
            if which != "tensor_type":
                what = (which or "untyped").replace("_type", "")
                return f"{kind} {info.name!r} is a {what}, not a tensor"
    return None


def read_data_sets(case_dir: Path, model: onnx.ModelProto) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Each test_data_set_* as (inputs, expected outputs), keyed by the model's input / output names."""
    sets = []
    for set_dir in sorted(case_dir.glob("test_data_set_*")):
        pair = []
        for kind, infos in (("input", model.graph.input), ("output", model.graph.output)):
            arrays = {}
            for j, info in enumerate(infos):
                tensor = onnx.TensorProto()
                tensor.ParseFromString((set_dir / f"{kind}_{j}.pb").read_bytes())
                arrays[info.name] = numpy_helper.to_array(tensor)
            pair.append(arrays)
        sets.append((pair[0], pair[1]))
    return sets


@dataclass
class Ran:
    """A finished command: exit code (None: timed out) and its text."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float


def rnnc(args: Sequence[str], log: Path, timeout_s: float) -> Ran:
    """`python -m rnnc ARGS` as a user runs it; stdout and stderr also go to `log` for a post-mortem."""
    cmd = [sys.executable, "-m", "rnnc", *map(str, args)]
    start = time.perf_counter()
    # A session of its own, so that a timeout ends the command and whatever it started (compilers).
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace", start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
    ran = Ran(code, out, err, time.perf_counter() - start)
    log.write_text(f"$ {' '.join(cmd)}\nexit {ran.code}  ({ran.seconds:.1f} s)\n"
                   f"--- stdout\n{ran.stdout}\n--- stderr\n{ran.stderr}")
    return ran


def error_line(stderr: str, model: Path | None = None) -> str:
    """The line that says what went wrong: rnnc's `error:` lines, else a traceback's last line, else the first.

    Several `error:` lines (one per problem) are joined with '; '. The `MODEL: ` prefix that rnnc
    puts before each problem is dropped: it is the same path for every problem of the case.
    """
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", stderr) if ln.strip()]
    errors = [ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")]
    if model is not None:
        errors = [e[len(f"{model}: "):] if e.startswith(f"{model}: ") else e for e in errors]
    if errors:
        return "; ".join(errors)
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1]
    return lines[0] if lines else "(no message)"


def failure(ran: Ran, what: str, timeout_s: float) -> str:
    """An errored command as one reason: exit code and its line, or the timeout."""
    if ran.code is None:
        return f"{what} timed out after {timeout_s:g} s"
    return f"{what} exit {ran.code}: {error_line(ran.stderr)}"


def compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[str, float | None]:
    """('' or the reason it differs, max abs error) for one output, as ONNX's backend runner judges.

    np.isclose with equal_nan is assert_allclose's criterion (|got - want| <= atol + rtol * |want|,
    NaN equal to NaN, infinities equal when of the same sign); integers, bools and strings must be equal.
    """
    if got.shape != want.shape:
        return f"output {name!r}: shape {got.shape} != expected {want.shape}", None
    if got.dtype != want.dtype:
        return f"output {name!r}: dtype {got.dtype} != expected {want.dtype}", None
    if want.dtype.kind == "V":  # ml_dtypes' bfloat16, float8 and int4 types: compare their values
        kind = np.float32 if "float" in want.dtype.name else np.int64
        got, want = got.astype(kind), want.astype(kind)
    if want.size == 0:
        return "", 0.0
    if want.dtype.kind in "fc":
        ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        ok = got == want
    err = _max_abs_err(got, want)
    bad = int(ok.size - np.count_nonzero(ok))
    if bad == 0:
        return "", err
    nan = np.count_nonzero(np.isnan(got) != np.isnan(want)) if want.dtype.kind in "fc" else 0
    detail = f", NaN where not expected or missing at {nan}" if nan else ""
    err_text = "" if err is None else f", max abs err {err:.3g}"
    return f"output {name!r}: {bad}/{ok.size} values differ{err_text}{detail}", err


def _max_abs_err(got: np.ndarray, want: np.ndarray) -> float | None:
    """The largest |got - want| over positions where both are finite numbers (None for non-numbers)."""
    if want.dtype.kind not in "biufc":
        return None
    a, b = got.astype(np.complex128 if want.dtype.kind == "c" else np.float64), want.astype(
        np.complex128 if want.dtype.kind == "c" else np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0


def bind_candidates(model: onnx.ModelProto, message: str) -> list[str]:
    """The integer / bool inputs to fix with --bind: those the refusal names, else all of them."""
    ints = [i.name for i in model.graph.input
            if i.type.HasField("tensor_type")
            and onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).kind in "biu"]
    named = [n for n in ints if f"'{n}'" in message or f"--bind {n}=" in message]
    return named or ints


def _safe(name: str) -> str:
    """A file-name-safe version of an input name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def run_case(case_dir: Path, ops: list[str], opts: Options) -> list[Record]:
    """Compile one case with rnnc and run every backend that built; one record per backend.

    Never raises: a harness error (a data file that does not load, an array numpy cannot save) is
    that case's `errored` record, so one odd case cannot stop a run of two thousand.
    """
    start = time.perf_counter()
    work = opts.out / "cases" / case_dir.name
    try:
        records = _run_case(case_dir, ops, opts, work)
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        records = [Record(case_dir.name, b, ERRORED, f"harness: {type(err).__name__}: {err}".splitlines()[0], ops)
                   for b in opts.backends]
    for r in records:
        r.seconds = round(time.perf_counter() - start, 2)
    if not opts.keep and all(r.outcome == PASSED for r in records):
        shutil.rmtree(work, ignore_errors=True)  # TVM libraries of every case would fill the disk
    return records


def _run_case(case_dir: Path, ops: list[str], opts: Options, work: Path) -> list[Record]:
    name = case_dir.name
    model = onnx.load(str(case_dir / "model.onnx"))

    def every(outcome: str, reason: str, **kw: Any) -> list[Record]:
        return [Record(name, b, outcome, reason, ops, **kw) for b in opts.backends]

    why = non_tensor_reason(model)
    if why:
        return every(NOT_TENSOR, why)
    data_sets = read_data_sets(case_dir, model)
    if not data_sets:
        return every(ERRORED, "harness: no test_data_set_* folder")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    compiled = work / "compiled"
    args = ["compile", case_dir / "model.onnx", "--target", "cpu", "--backends", ",".join(opts.backends),
            "--out", compiled]
    ran = rnnc(args, work / "compile.log", opts.timeout_s)
    bound: list[str] = []
    if ran.code == 2 and "--bind" in ran.stderr:
        # Integer / bool inputs (indices, shapes, axes) cannot be drawn at random for verification:
        # fix them to the test's own values, as a user would, and retry once.
        bound = bind_candidates(model, ran.stderr)
        binds = []
        for n in bound:
            path = work / f"bind_{_safe(n)}.npy"
            np.save(path, data_sets[0][0][n])
            binds.append(f"{n}={path}")
        if binds:
            ran = rnnc([*args, "--bind", ",".join(binds)], work / "compile_bind.log", opts.timeout_s)
    if ran.code == 2:
        return every(REFUSED, error_line(ran.stderr, case_dir / "model.onnx"), bound=bound)
    manifest_path = compiled / "manifest.json"
    if not manifest_path.is_file():
        return every(ERRORED, failure(ran, "compile", opts.timeout_s) + " (no manifest.json)", bound=bound)
    backends = json.loads(manifest_path.read_text()).get("backends", {})
    return [_run_backend(name, ops, b, backends.get(b), compiled, work, data_sets, bound, opts)
            for b in opts.backends]


def _run_backend(case: str, ops: list[str], backend: str, entry: dict[str, Any] | None, compiled: Path,
                 work: Path, data_sets: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
                 bound: list[str], opts: Options) -> Record:
    """Run one backend's artifact on every data set and judge its outputs."""
    rec = Record(case, backend, ERRORED, "", ops, bound=bound)
    if entry is None:
        rec.reason = "compile wrote no manifest entry for this backend"
        return rec
    rec.compile_status = status = entry.get("status")
    reason = (entry.get("reason") or "").strip()
    if status == "skipped":
        rec.outcome, rec.reason = SKIPPED, reason or "(no reason given)"
        return rec
    if status != "ok" and not entry.get("artifacts"):
        rec.reason = f"compile {status} without artifacts: {reason}"
        return rec
    worst: float | None = None
    for i, (inputs, expected) in enumerate(data_sets):
        npz, out = work / f"in_{i}.npz", work / f"out_{backend}_{i}.npz"
        np.savez(npz, **{k: v for k, v in inputs.items() if k not in bound})
        ran = rnnc(["run", compiled, "--backend", backend, "--inputs", npz, "--out", out],
                   work / f"run_{backend}_{i}.log", opts.timeout_s)
        if ran.code != 0:
            rec.reason = failure(ran, "run", opts.timeout_s)
            return rec
        with np.load(out, allow_pickle=False) as got:
            for name, want in expected.items():
                if name not in got.files:
                    rec.outcome, rec.reason = FAILED, f"output {name!r} missing from run's outputs {got.files}"
                    return rec
                why, err = compare(name, got[name], want, opts.rtol, opts.atol)
                if err is not None:
                    worst = err if worst is None else max(worst, err)
                if why:
                    rec.outcome, rec.reason, rec.max_abs_err = FAILED, why, worst
                    return rec
    rec.outcome, rec.max_abs_err = PASSED, worst
    if status != "ok":  # right on the test's data though compile's own verification failed: say so
        rec.reason = f"compile verification {status}: {reason}"
    return rec


# --------------------------------------------------------------------------- the whole run


def run_all(cases: Sequence[tuple[Path, list[str]]], opts: Options, jobs: int = 1,
            progress: bool = True) -> list[Record]:
    """Every case through `run_case`, `jobs` at a time in a process pool; results.json kept up to date.

    Records come back in case order whatever the order of completion, so two runs diff cleanly.
    """
    opts.out.mkdir(parents=True, exist_ok=True)
    done: dict[int, list[Record]] = {}
    start = time.perf_counter()

    def finished(i: int, records: list[Record]) -> None:
        done[i] = records
        write_results(opts, [r for k in sorted(done) for r in done[k]], partial=len(done) < len(cases))
        if progress:
            elapsed = time.perf_counter() - start
            eta = elapsed / len(done) * (len(cases) - len(done))
            outcomes = "  ".join(f"{r.backend}:{r.outcome}" for r in records)
            print(f"[{len(done)}/{len(cases)}] {cases[i][0].name}  {outcomes}  "
                  f"elapsed {_duration(elapsed)}  ETA {_duration(eta)}", file=sys.stderr, flush=True)

    if jobs <= 1:
        for i, (case_dir, ops) in enumerate(cases):
            finished(i, run_case(case_dir, ops, opts))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures: dict[Future[list[Record]], int] = {
                pool.submit(run_case, case_dir, ops, opts): i for i, (case_dir, ops) in enumerate(cases)}
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
    return [r for k in sorted(done) for r in done[k]]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def tally(records: Iterable[Record]) -> dict[str, Counter[str]]:
    """Outcome counts per backend."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        counts[r.backend][r.outcome] += 1
    return dict(counts)


def normalise(reason: str) -> str:
    """A reason with its particulars (paths, quoted names, shapes, numbers) blanked, so repeats group.

    A refusal that lists one problem per input (x, then y) becomes one problem: repeats are dropped.
    """
    parts = []
    for part in reason.split("; "):
        text = re.sub(r"(?<![\w.])(?:/[^\s:;,'\"()]+)+", "PATH", part)
        text = re.sub(r"(?<!\w)'[^']*'(?!\w)|(?<!\w)\"[^\"]*\"(?!\w)", "'…'", text)
        text = re.sub(r"(?<!\w)\(\s*\d+(?:\s*,\s*\d*)*\s*\)|(?<!\w)\[\s*\d+(?:\s*,\s*\d+)*\s*\]", "SHAPE", text)
        text = re.sub(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", "N", text).strip()
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def table(records: Sequence[Record], backends: Sequence[str]) -> str:
    """Counts per backend and in total, one column per outcome."""
    counts = tally(records)
    rows = [["backend", "cases", *OUTCOMES]]
    total: Counter[str] = Counter()
    for b in backends:
        c = counts.get(b, Counter())
        total.update(c)
        rows.append([b, str(sum(c.values())), *(str(c[o]) for o in OUTCOMES)])
    rows.append(["total", str(sum(total.values())), *(str(total[o]) for o in OUTCOMES)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def summary_md(records: Sequence[Record], opts: Options) -> str:
    """summary.md: the table, then per backend every case that did not pass, grouped by reason."""
    lines = [f"# ONNX node tests through rnnc (onnx {onnx.__version__})", "",
             f"Tolerance: rtol {opts.rtol:g}, atol {opts.atol:g} (exact for integers and bools).", "",
             "```", table(records, opts.backends), "```", ""]
    for b in opts.backends:
        mine = [r for r in records if r.backend == b and (r.outcome != PASSED or r.reason)]
        lines += [f"## {b}", ""]
        if not mine:
            lines += ["Every case passed.", ""]
            continue
        for outcome in OUTCOMES:  # passes listed only with a note (compile's own verification failed)
            groups: dict[str, list[Record]] = defaultdict(list)
            for r in mine:
                if r.outcome == outcome:
                    groups[normalise(r.reason)].append(r)
            if not groups:
                continue
            title = "passed, with a note" if outcome == PASSED else outcome
            lines += [f"### {title} ({sum(map(len, groups.values()))})", ""]
            for reason, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                lines.append(f"- **{len(rs)}** × `{reason}`")
                for r in rs:
                    lines.append(f"  - {r.case}: {r.reason}")
            lines.append("")
    return "\n".join(lines)


def write_results(opts: Options, records: Sequence[Record], partial: bool = False) -> None:
    """DIR/results.json, atomically (an interrupted run leaves the cases done so far)."""
    doc = {"onnx": onnx.__version__, "backends": list(opts.backends), "rtol": opts.rtol, "atol": opts.atol,
           "partial": partial, "totals": {b: dict(c) for b, c in tally(records).items()},
           "records": [asdict(r) for r in records]}
    tmp = opts.out / f".results.json.{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(opts.out / "results.json")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", help="comma list of op types: cases whose nodes are all among them "
                                 "(default: every case of standard-domain ops)")
    p.add_argument("--match", help="regular expression the case name must contain, e.g. '^test_lstm'")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help="comma list (default %(default)s)")
    p.add_argument("--limit", type=int, help="run the first N selected cases only")
    p.add_argument("--jobs", type=int, default=1, help="cases in parallel (default 1)")
    p.add_argument("--out", type=Path, default=Path("build/onnx-node-tests"), help="default %(default)s")
    p.add_argument("--data", type=Path, help="a folder of test_* cases (default: onnx's, or generated)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds per rnnc command (default %(default)g)")
    p.add_argument("--keep", action="store_true", help="keep the work folders of cases that passed too")
    p.add_argument("--list", action="store_true", help="print the selected cases and their ops, run nothing")
    args = p.parse_args(argv)

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    ops = {o.strip() for o in args.ops.split(",") if o.strip()} if args.ops else None
    cases = select_cases(node_data_dir(args.data), ops, args.match, args.limit)
    if args.list:
        for case_dir, names in cases:
            print(f"{case_dir.name}  {','.join(names)}")
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2
    opts = Options(backends, args.out, args.timeout, args.keep)
    records = run_all(cases, opts, max(1, args.jobs))
    write_results(opts, records)
    (opts.out / "summary.md").write_text(summary_md(records, opts))
    print(table(records, backends))
    print(f"wrote {opts.out / 'results.json'} and {opts.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
